// Builds without the CUDA backend: asking for it fails with MLA_ERROR_UNSUPPORTED.
#include "backend.h"

namespace mla {

std::unique_ptr<Backend> make_cuda_backend(int32_t device) {
    throw Error(MLA_ERROR_UNSUPPORTED,
                "mla_context_create: options.backend = MLA_BACKEND_CUDA (1), device " +
                    std::to_string(device) + ": this libmla was built without CUDA");
}

}  // namespace mla
