// The attention layer on CUDA.
#pragma once

#include <memory>

#include "attention.cuh"
#include "backend.h"

namespace mla {
namespace cuda {

// Uploads the prepared weights (as bf16) to the current device; the layer owns them.
std::unique_ptr<LayerImpl> make_layer(const DeviceInfo& dev, const LayerSpec& spec,
                                      const PreparedWeights& w);

}  // namespace cuda
}  // namespace mla
