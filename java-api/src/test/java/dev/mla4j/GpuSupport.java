package dev.mla4j;

import org.junit.jupiter.api.Assumptions;

/** Skips GPU tests where no CUDA context can be made, with libmla's reason. */
final class GpuSupport {
    private GpuSupport() {
    }

    /** Device ordinal of the GPU tests: system property mla4j.test.device, default 0. */
    static int device() {
        return Integer.getInteger("mla4j.test.device", 0);
    }

    private static volatile String reason;  // "" = CUDA available; probed once per JVM

    /** Null when a CUDA context can be made here, else libmla's reason (probed once). */
    static String unavailableReason() {
        if (reason == null) {
            String r = NativeLibrary.cudaUnavailableReason();
            reason = r == null ? "" : r;
        }
        return reason.isEmpty() ? null : reason;
    }

    /**
     * Aborts the calling test (reported as skipped, never passed) when CUDA is unavailable; fails
     * it instead under -Dmla4j.test.requireCuda=true (GPU runners, where a skip would hide a
     * broken setup).
     */
    static void assumeCuda() {
        String r = unavailableReason();
        if (r != null && Boolean.getBoolean("mla4j.test.requireCuda")) {
            throw new AssertionError("mla4j.test.requireCuda is set, but there is no CUDA device: " + r);
        }
        Assumptions.assumeTrue(r == null, () -> "no CUDA device: " + r);
    }
}
