package dev.mla4j;

import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;

/** {@link WeightTypesTest} (bf16, f16, f32 and FP8 block-scaled weights) on a CUDA context; skipped without one. */
@Tag("gpu")
class CudaWeightTypesTest extends WeightTypesTest {
    @BeforeEach
    void requireCuda() {
        GpuSupport.assumeCuda();
    }

    @Override
    MlaContext openContext() {
        return MlaContext.cuda(GpuSupport.device());
    }
}
