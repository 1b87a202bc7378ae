package dev.mla4j;

import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;

/** {@link ConcurrencyTest}'s 8 decoding threads on one GPU; skipped where no CUDA device is present. */
@Tag("gpu")
class CudaConcurrencyTest extends ConcurrencyTest {
    @BeforeEach
    void requireCuda() {
        GpuSupport.assumeCuda();
    }

    @Override
    MlaContext openContext() {
        return MlaContext.cuda(GpuSupport.device());
    }
}
