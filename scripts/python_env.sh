# Sourced by setup.sh, test.sh and workbench.sh: the environment their Python processes run in.
#
# Python writes the bytecode (.pyc) of what it imports into .venv, once. uv installs none,
# and a machine that sets PYTHONDONTWRITEBYTECODE (this one does) would have every
# interpreter compile torch, transformers, Ray and AgileRL from source again: importing
# AgileRL's algorithms took 14.7 CPU-s instead of 6.5, in every agent template, import check
# and test server, and the clean-clone suite took 30 min instead of 18. Compiling only what is
# imported costs about 25 CPU-s once; compiling all of site-packages ahead took 48 s of set-up.
unset PYTHONDONTWRITEBYTECODE
