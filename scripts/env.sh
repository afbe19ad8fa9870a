# Sourced by demo.sh and test.sh after setup.sh: what the build needs from
# .deps in the environment.
# A newer CMake than the system's (setup.sh installs it on Ubuntu 22.04 and
# older): the cmake crate that builds static faiss takes it from CMAKE.
if [ -x .deps/cmake/bin/cmake ]; then
  export CMAKE="$PWD/.deps/cmake/bin/cmake"
fi
