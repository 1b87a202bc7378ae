package dev.mla4j;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/** Loading libmla in child JVMs: overrides, errors, and the native-access flag. */
class NativeLibraryTest {
    record Result(int exit, String output) {
    }

    private static Result probe(List<String> jvmArgs) throws IOException, InterruptedException {
        List<String> cmd = new ArrayList<>();
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        cmd.addAll(jvmArgs);
        cmd.add("-cp");
        cmd.add(System.getProperty("java.class.path"));
        cmd.add(NativeAccessProbe.class.getName());
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true);
        pb.environment().remove(NativeLibrary.PATH_ENV);
        Process p = pb.start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        return new Result(p.waitFor(), out);
    }

    @Test
    void bundledLibraryLoadsInAFreshJvm() throws Exception {
        Result r = probe(List.of("--enable-native-access=ALL-UNNAMED"));
        assertEquals(0, r.exit, r.output);
        assertTrue(r.output.contains("loaded bundled"), r.output);
        assertTrue(r.output.contains("cpu"), r.output);
    }

    /** Whether this jar (the class path) bundles the CUDA build. */
    private static boolean bundlesCudaBuild() throws IOException {
        java.util.Properties props = new java.util.Properties();
        try (var in = NativeLibrary.class.getResourceAsStream("native/mla4j-native.properties")) {
            props.load(in);
        }
        return NativeLibrary.class.getClassLoader().getResource(props.getProperty("resource.cuda")) != null;
    }

    private static boolean driverLoads() {
        try (java.lang.foreign.Arena arena = java.lang.foreign.Arena.ofConfined()) {
            java.lang.foreign.SymbolLookup.libraryLookup("libcuda.so.1", arena);
            return true;
        } catch (IllegalArgumentException e) {
            return false;
        }
    }

    @Test
    void bundledBuildFollowsTheDriverAndTheChoiceIsLogged() throws Exception {
        Result r = probe(List.of("--enable-native-access=ALL-UNNAMED", "-Dmla4j.backend=auto"));
        assertEquals(0, r.exit, r.output);
        boolean cuda = bundlesCudaBuild() && driverLoads();
        String variant = cuda ? "cuda" : "cpu";
        assertTrue(r.output.contains(" build " + variant + " ("), r.output);
        assertTrue(r.output.matches("(?s).*libmla-" + variant + "-[^/]*\\.so.*"), r.output);
        String reason = cuda ? "NVIDIA driver found" : bundlesCudaBuild() ? "no NVIDIA driver: libcuda.so.1 cannot be loaded"
                : "this jar has no CUDA build";
        assertTrue(r.output.contains(reason), r.output);
        assertTrue(r.output.contains("mla4j: loaded libmla " + variant + " build"), "logged: " + r.output);
    }

    @Test
    void backendPropertyForcesTheBuild() throws Exception {
        Result cpu = probe(List.of("--enable-native-access=ALL-UNNAMED", "-Dmla4j.backend=cpu"));
        assertEquals(0, cpu.exit, cpu.output);
        assertTrue(cpu.output.contains(" build cpu (system property mla4j.backend=cpu)"), cpu.output);
        assertTrue(cpu.output.matches("(?s).*libmla-cpu-[^/]*\\.so.*"), cpu.output);

        Result cuda = probe(List.of("--enable-native-access=ALL-UNNAMED", "-Dmla4j.backend=cuda"));
        if (bundlesCudaBuild()) {
            // the CUDA build loads without a driver (static CUDA runtime) and serves CPU contexts
            assertEquals(0, cuda.exit, cuda.output);
            assertTrue(cuda.output.contains(" build cuda (system property mla4j.backend=cuda)"), cuda.output);
            assertTrue(cuda.output.matches("(?s).*libmla-cuda-[^/]*\\.so.*"), cuda.output);
        } else {
            assertEquals(3, cuda.exit, cuda.output);
            assertTrue(cuda.output.contains("has no CUDA build of libmla"), cuda.output);
        }

        Result bad = probe(List.of("--enable-native-access=ALL-UNNAMED", "-Dmla4j.backend=tpu"));
        assertEquals(3, bad.exit, bad.output);
        assertTrue(bad.output.contains("mla4j.backend = \"tpu\", expected cpu, cuda or auto"), bad.output);
    }

    @Test
    void concurrentJvmsExtractIntoOneFreshDirectory(@TempDir Path tmp) throws Exception {
        // Several JVMs extract the bundled library into the same empty directory at once: each
        // writes its own temporary file and renames it into place, so all load a complete copy.
        List<Process> procs = new ArrayList<>();
        for (int i = 0; i < 4; i++) {
            List<String> cmd = new ArrayList<>(List.of(Path.of(System.getProperty("java.home"), "bin", "java").toString(),
                    "--enable-native-access=ALL-UNNAMED", "-Djava.io.tmpdir=" + tmp, "-cp",
                    System.getProperty("java.class.path"), NativeAccessProbe.class.getName()));
            ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true);
            pb.environment().remove(NativeLibrary.PATH_ENV);
            procs.add(pb.start());
        }
        for (Process p : procs) {
            String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
            assertEquals(0, p.waitFor(), out);
            assertTrue(out.contains("loaded bundled"), out);
        }
        List<Path> files;
        try (var walk = Files.walk(tmp)) {
            files = walk.filter(Files::isRegularFile).toList();
        }
        assertEquals(1, files.size(), "one extracted library and no leftover temporary files: " + files);
        assertTrue(files.get(0).getFileName().toString().endsWith(".so"), files.toString());
    }

    @Test
    void extractionRefusesADirectoryOthersCanWrite(@TempDir Path tmp) throws Exception {
        assumeTrue(tmp.getFileSystem().supportedFileAttributeViews().contains("posix"), "needs POSIX permissions");
        String user = System.getProperty("user.name", "user").replaceAll("[^A-Za-z0-9_.-]", "_");
        Path shared = Files.createDirectory(tmp.resolve("mla4j-" + user));
        Files.setPosixFilePermissions(shared, PosixFilePermissions.fromString("rwxrwxrwx"));
        Result r = probe(List.of("--enable-native-access=ALL-UNNAMED", "-Djava.io.tmpdir=" + tmp));
        assertEquals(3, r.exit, r.output);
        assertTrue(r.output.contains("not writable by other users"), r.output);
        try (var walk = Files.walk(shared)) {
            assertEquals(1, walk.count(), "nothing extracted into the shared directory");
        }
    }

    @Test
    void missingNativeAccessNamesTheFlag() throws Exception {
        Result r = probe(List.of("--illegal-native-access=deny"));
        assertEquals(3, r.exit, r.output);
        assertTrue(r.output.contains("--enable-native-access=ALL-UNNAMED"), r.output);
    }

    @Test
    void overridePropertyIsUsedAndCheckedForExistence() throws Exception {
        Path real = NativeLibrary.path();
        Result ok = probe(List.of("--enable-native-access=ALL-UNNAMED", "-D" + NativeLibrary.PATH_PROPERTY + "=" + real));
        assertEquals(0, ok.exit, ok.output);
        assertTrue(ok.output.contains("loaded system property " + NativeLibrary.PATH_PROPERTY + " " + real), ok.output);

        Result missing = probe(List.of("--enable-native-access=ALL-UNNAMED",
                "-D" + NativeLibrary.PATH_PROPERTY + "=/nonexistent/libmla.so"));
        assertEquals(3, missing.exit, missing.output);
        assertTrue(missing.output.contains("libmla not found at /nonexistent/libmla.so (from system property "
                + NativeLibrary.PATH_PROPERTY + ")"), missing.output);
    }

    @Test
    void aLibraryThatIsNotLibmlaIsRejected() throws Exception {
        Path libm = Path.of("/lib/x86_64-linux-gnu/libm.so.6");
        assumeTrue(Files.isRegularFile(libm), "needs " + libm);
        Result r = probe(List.of("--enable-native-access=ALL-UNNAMED", "-D" + NativeLibrary.PATH_PROPERTY + "=" + libm));
        assertEquals(3, r.exit, r.output);
        assertTrue(r.output.contains("does not export mla_abi_version"), r.output);
    }
}
