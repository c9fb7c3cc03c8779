# ctest client_package_test: install -> configure and build the example as an outside project -> run it.
# Variables: BUILD_DIR, EXAMPLE_DIR, WORK_DIR, GENERATOR, EXAMPLE_FLAGS (sanitizer flags or empty).
file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
endfunction()

run_step("install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix} --component client)
if(NOT EXISTS ${prefix}/include/throttlex/client.h)
  message(FATAL_ERROR "install did not put include/throttlex/client.h under ${prefix}")
endif()
run_step("configure example" ${CMAKE_COMMAND} -S ${EXAMPLE_DIR} -B ${WORK_DIR}/build -G ${GENERATOR}
         -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${prefix}
         "-DCMAKE_CXX_FLAGS=${EXAMPLE_FLAGS}" "-DCMAKE_EXE_LINKER_FLAGS=${EXAMPLE_FLAGS}")
run_step("build example" ${CMAKE_COMMAND} --build ${WORK_DIR}/build)

set(example ${WORK_DIR}/build/client_example)
run_step("client_example --help" ${example} --help)

# Nothing listens on port 1 of loopback: the example must fail fast and say so, not hang or crash.
execute_process(COMMAND ${example} --nodes 127.0.0.1:1 --connect-timeout-ms 200
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 20)
if(NOT rc EQUAL 2 OR NOT err MATCHES "no ThrottleX node reachable")
  message(FATAL_ERROR "expected exit 2 and 'no ThrottleX node reachable', got ${rc}:\n${out}\n${err}")
endif()
message(STATUS "client_package_test: ok")
