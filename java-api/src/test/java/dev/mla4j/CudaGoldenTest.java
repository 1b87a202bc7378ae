package dev.mla4j;

import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;

/**
 * Every golden file, sequence, mode and cache dtype of {@link GoldenTest} through the Java API on
 * a CUDA context (weights from the mmap'd safetensors, activations through device buffers).
 * Skipped, with the reason, where no CUDA device is present.
 */
@Tag("gpu")
class CudaGoldenTest extends GoldenTest {
    /** Runs after GoldenTest.open: replaces its CPU context with a CUDA one, where there is a GPU. */
    @BeforeAll
    static void openCuda() {
        if (context != null) {
            context.close();
            context = null;
        }
        if (GpuSupport.unavailableReason() == null) {
            context = MlaContext.cuda(GpuSupport.device());
        }
    }

    /** Each case is reported as skipped, with the reason, where there is none. */
    @BeforeEach
    void requireCuda() {
        GpuSupport.assumeCuda();
    }

    /** The CUDA layer keeps its weights in bf16, so even an f32 cache is within the bf16 bound. */
    @Override
    double tolerance(DType cacheType) {
        return TestSupport.TOL_CUDA;
    }

    /** Runs before GoldenTest.close, which then finds nothing to close. */
    @AfterAll
    static void closeCuda() {
        if (context != null) {
            context.close();
            context = null;
        }
    }
}
