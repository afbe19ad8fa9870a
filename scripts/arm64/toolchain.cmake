# CMake toolchain for cross-compiling static faiss (faiss-sys) to aarch64 with
# Debian's cross gcc, against the arm64 sysroot that scripts/arm64-check.sh
# unpacks (its path comes in SHITU_ARM64_SYSROOT).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

set(_sysroot "$ENV{SHITU_ARM64_SYSROOT}")
if(NOT _sysroot)
  message(FATAL_ERROR "SHITU_ARM64_SYSROOT is not set: run scripts/arm64-check.sh")
endif()
# Libraries and headers only from the sysroot and the cross toolchain, never
# the host's x86_64 ones; programs (cmake's helpers) from the host.
set(CMAKE_FIND_ROOT_PATH "${_sysroot}" /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# The sysroot's BLAS needs libgfortran, found through rpath-link when
# FindBLAS links its test programs.
set(_link "-Wl,-rpath-link,${_sysroot}/usr/lib/aarch64-linux-gnu -Wl,-rpath-link,${_sysroot}/lib/aarch64-linux-gnu")
set(CMAKE_EXE_LINKER_FLAGS_INIT "${_link}")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "${_link}")
