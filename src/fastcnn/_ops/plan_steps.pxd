# A compiled step of an inference plan: a kernel body and its arguments, bound once when the
# plan is made (pointers into the plan's buffers and the step's prepared operands), so that a
# run calls the kernel with no Python in between. Each kernel module defines its steps as
# subclasses of CompiledStep next to its kernels, sharing their `cdef ... nogil` bodies with
# the module's `def` entry points (one code path). plan_steps.pyx runs them.

# body(args, num_threads): the step's kernel on its bound arguments, on num_threads threads
ctypedef void (*step_body)(void* args, int num_threads) noexcept nogil


cdef class CompiledStep:
    cdef step_body body
    cdef void* args              # the subclass's argument struct (a field of the step itself)
    cdef object keep             # the arrays that args points into, kept alive with the step


cdef inline void* address(object array) except NULL:
    """The first element of a numpy array (checked by plan_steps.check_arrays)."""
    return <void*> <size_t> array.__array_interface__["data"][0]
