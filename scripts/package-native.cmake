# Copies the libmla builds of a CMake build directory into the jar's resources (run by java-api's
# pom with cmake -P):
#   cmake -DBUILD=<cmake build dir> -DDEST=<resources dir>/dev/mla4j/native/<platform>
#         -DVERSION=<project version> -P scripts/package-native.cmake
# DEST receives libmla-cpu-<VERSION>.so (always) and libmla-cuda-<VERSION>.so (where the build had
# the CUDA backend; a stale one from an earlier build is removed otherwise). NativeLibrary picks
# one of them at load time.
foreach(var BUILD DEST VERSION)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "package-native.cmake: -D${var}=... is required")
  endif()
endforeach()
set(variants "${BUILD}/native/mla-variants.cmake")
if(NOT EXISTS "${variants}")
  message(FATAL_ERROR "package-native.cmake: ${variants} is missing; configure ${BUILD} with CMake first")
endif()
include("${variants}")
file(MAKE_DIRECTORY "${DEST}")
if(MLA_VARIANT_CUDA)
  set(cpu "${BUILD}/native/libmla-cpu.so")
  set(cuda "${BUILD}/native/libmla.so")
else()
  set(cpu "${BUILD}/native/libmla.so")
  set(cuda "")
endif()
foreach(f ${cpu} ${cuda})
  if(NOT EXISTS "${f}")
    message(FATAL_ERROR "package-native.cmake: ${f} is missing; build the mla_natives target of ${BUILD}")
  endif()
endforeach()
# file(COPY_FILE) follows the libmla.so -> libmla.so.0 -> libmla.so.0.1.0 links.
file(COPY_FILE "${cpu}" "${DEST}/libmla-cpu-${VERSION}.so" ONLY_IF_DIFFERENT)
if(cuda)
  file(COPY_FILE "${cuda}" "${DEST}/libmla-cuda-${VERSION}.so" ONLY_IF_DIFFERENT)
else()
  file(REMOVE "${DEST}/libmla-cuda-${VERSION}.so")
endif()
