// Open MPI's C API for Swift. MPI's handles are macros Swift cannot import
// (`(MPI_Comm)&ompi_mpi_comm_world`), so small inline functions return them.
#ifndef FACET_CMPI_SHIM_H
#define FACET_CMPI_SHIM_H
#include <mpi.h>

static inline MPI_Comm facet_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype facet_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype facet_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Datatype facet_mpi_int64(void) { return MPI_INT64_T; }
static inline MPI_Errhandler facet_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline MPI_Request facet_mpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Status *facet_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline int facet_mpi_thread_multiple(void) { return MPI_THREAD_MULTIPLE; }
static inline int facet_mpi_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }
static inline int facet_mpi_success(void) { return MPI_SUCCESS; }
static inline int facet_mpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
static inline int facet_mpi_max_processor_name(void) { return MPI_MAX_PROCESSOR_NAME; }

#endif
