package dev.mla4j;

import com.github.dockerjava.api.model.DeviceRequest;
import com.github.dockerjava.api.model.Info;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.testcontainers.DockerClientFactory;
import org.testcontainers.containers.GenericContainer;
import org.testcontainers.containers.startupcheck.OneShotStartupCheckStrategy;
import org.testcontainers.images.builder.ImageFromDockerfile;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Runs the Java GPU suite (the classes tagged "gpu") inside a CUDA container: builds
 * docker/Dockerfile.cuda (base image: system property mla4j.gpu.baseImage; image name:
 * mla4j.gpu.image) with the .gpu-java bundle and the golden vectors, requests every GPU through
 * the NVIDIA container runtime, and requires the suite to pass with at least one test run and
 * none skipped or aborted. The container's JUnit XML reports are copied to target/gpu-container-reports/.
 *
 * <p>Skipped, with the reason, where there is no Docker engine or it has no "nvidia" runtime.
 */
@Tag("container")
class GpuContainerIT {
    private static final Pattern COUNT = Pattern.compile("\\[\\s*(\\d+) tests (successful|failed|skipped|aborted)\\s*]");

    @Test
    void gpuSuitePassesInACudaContainer() throws IOException {
        Assumptions.assumeTrue(DockerClientFactory.instance().isDockerAvailable(),
                "no Docker engine reachable (Testcontainers found no DOCKER_HOST, socket or context)");
        Info info = DockerClientFactory.instance().client().infoCmd().exec();
        Map<String, ?> runtimes = info.getRuntimes();
        Assumptions.assumeTrue(runtimes != null && runtimes.containsKey("nvidia"),
                () -> "the Docker engine has no NVIDIA container runtime (runtimes: "
                        + (runtimes == null ? "none" : runtimes.keySet()) + "); install nvidia-container-toolkit");

        Path root = Path.of(System.getProperty("mla4j.root", "..")).toAbsolutePath().normalize();
        Path bundle = root.resolve(".gpu-java");
        if (!Files.isDirectory(bundle.resolve("test-classes"))) {
            fail(bundle + " is missing: make it with scripts/make-gpu-java-bundle.sh before running this test");
        }
        String base = System.getProperty("mla4j.gpu.baseImage", "nvidia/cuda:13.0.1-runtime-ubuntu24.04");
        String name = System.getProperty("mla4j.gpu.image", "mla4j-gpu-test:latest");
        ImageFromDockerfile image = new ImageFromDockerfile(name, false)
                .withFileFromPath("Dockerfile", root.resolve("docker/Dockerfile.cuda"))
                .withFileFromPath("gpu-java", bundle)
                .withFileFromPath("testdata/golden", root.resolve("testdata/golden"))
                .withFileFromPath("run-tests.sh", root.resolve("scripts/lib/run-java-tests.sh"))
                .withBuildArg("BASE_IMAGE", base);

        Path reports = root.resolve("java-api/target/gpu-container-reports");
        Files.createDirectories(reports);
        String logs;
        try (GenericContainer<?> c = new GenericContainer<>(image)
                .withCreateContainerCmdModifier(cmd -> cmd.getHostConfig().withDeviceRequests(List.of(
                        new DeviceRequest().withDriver("nvidia").withCount(-1)
                                .withCapabilities(List.of(List.of("gpu"))))))
                .withStartupCheckStrategy(new OneShotStartupCheckStrategy().withTimeout(Duration.ofMinutes(30)))) {
            try {
                c.start();  // returns when the suite has exited with status 0, throws otherwise
            } finally {
                logs = c.getLogs();
                System.out.println(logs);
                try {
                    c.copyFileFromContainer("/reports/TEST-junit-jupiter.xml",
                            reports.resolve("TEST-junit-jupiter.xml").toString());
                } catch (RuntimeException e) {
                    System.out.println("GpuContainerIT: no JUnit report to copy: " + e.getMessage());
                }
            }
        }
        Matcher m = COUNT.matcher(logs);
        long successful = -1;
        long skipped = -1;
        long failed = -1;
        long aborted = -1;
        while (m.find()) {
            long n = Long.parseLong(m.group(1));
            switch (m.group(2)) {
                case "successful" -> successful = n;
                case "skipped" -> skipped = n;
                case "failed" -> failed = n;
                case "aborted" -> aborted = n;
                default -> {
                }
            }
        }
        assertTrue(successful > 0, "tests successful in the container: " + successful);
        assertEquals(0, failed, "tests failed in the container");
        assertEquals(0, skipped, "tests skipped in the container (a GPU run must not skip)");
        assertEquals(0, aborted, "tests aborted (failed assumptions) in the container");
    }
}
