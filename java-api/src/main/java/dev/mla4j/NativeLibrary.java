package dev.mla4j;

import dev.mla4j.bindings.Mla;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.PosixFileAttributes;
import java.nio.file.attribute.PosixFilePermission;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HexFormat;
import java.util.Locale;
import java.util.Properties;
import java.util.Set;

/**
 * Finds and loads libmla, once per class loader.
 *
 * <p>Where the library comes from, first match wins:
 * <ol>
 *   <li>the system property {@value #PATH_PROPERTY} (a file path);</li>
 *   <li>the environment variable {@value #PATH_ENV};</li>
 *   <li>a build bundled in this jar under {@code dev/mla4j/native/<os>-<arch>/}, extracted once into
 *       {@code <java.io.tmpdir>/mla4j-<user>/<sha256 prefix>/} (reused by later JVMs while its
 *       content matches). The jar carries {@code libmla-cpu-<version>.so} and, where it was built
 *       with nvcc, {@code libmla-cuda-<version>.so} (CUDA and CPU backends, CUDA runtime linked
 *       statically). The CUDA build is loaded where an NVIDIA driver is installed
 *       ({@code libcuda.so.1} loads), else the CPU build; the system property
 *       {@value #BACKEND_PROPERTY} = cpu or cuda forces one. The choice and its reason are logged
 *       (System.Logger "dev.mla4j", INFO) and returned by {@link #build()}.</li>
 * </ol>
 * After loading, {@code mla_abi_version()} must equal the {@code MLA_ABI_VERSION} the bindings
 * were generated with; a mismatch fails with an {@link UnsatisfiedLinkError} naming both.
 *
 * <p>The generated bindings look symbols up with {@code SymbolLookup.loaderLookup()}, so every API
 * class calls {@link #load()} before its first native call. Native access must be enabled for the
 * code on the class path ({@code --enable-native-access=ALL-UNNAMED}) or for the modules
 * {@code dev.mla4j.bindings,dev.mla4j}; the executable jar enables it in its manifest.
 */
public final class NativeLibrary {
    /** System property naming a libmla file to load instead of the bundled one. */
    public static final String PATH_PROPERTY = "mla4j.library.path";
    /** Environment variable naming a libmla file to load instead of the bundled one. */
    public static final String PATH_ENV = "MLA4J_LIBRARY";

    private static final String NATIVE_ACCESS_HINT = "libmla is called through the Foreign Function & Memory "
            + "API, which needs native access: start java with --enable-native-access=ALL-UNNAMED "
            + "(class path) or --enable-native-access=dev.mla4j.bindings,dev.mla4j (module path)";

    /** System property forcing the backend of {@link MlaContext#auto()}: "cpu", "cuda" or "auto" (default). */
    public static final String BACKEND_PROPERTY = "mla4j.backend";

    private static final System.Logger LOG = System.getLogger("dev.mla4j");

    private static volatile Loaded loaded;
    private static volatile BackendChoice choice;

    /**
     * The backend a default context ({@link MlaContext#auto()}) uses, and why.
     *
     * @param backend CUDA or CPU
     * @param reason  e.g. "CUDA device 0 available: cuda:0 NVIDIA H100 sm_90", or why CUDA is not
     *                used (libmla's message: no driver, no device, built without CUDA)
     */
    public record BackendChoice(MlaContext.Backend backend, String reason) {
    }

    /**
     * Which libmla build was loaded, and why.
     *
     * @param variant "cuda" or "cpu" for a bundled build, "external" for a file named by
     *                {@value #PATH_PROPERTY} or {@value #PATH_ENV}
     * @param reason  e.g. "NVIDIA driver found (libcuda.so.1 loads)", "no NVIDIA driver: …",
     *                "system property mla4j.backend=cpu"
     */
    public record Build(String variant, String reason) {
    }

    private record Loaded(Path path, String source, int version, int abiVersion, Build build) {
    }

    private record Bundled(Path path, Build build) {
    }

    private NativeLibrary() {
    }

    /**
     * Loads libmla if this class loader has not yet; idempotent and thread-safe.
     *
     * @throws UnsatisfiedLinkError  the library is missing, cannot be loaded, or has another ABI version
     * @throws IllegalStateException native access is not enabled (the message names the flag)
     */
    public static void load() {
        if (loaded == null) {
            synchronized (NativeLibrary.class) {
                if (loaded == null) {
                    loaded = doLoad();
                }
            }
        }
    }

    /**
     * Chooses the backend of a default context once per class loader and logs the choice and its
     * reason (System.Logger "dev.mla4j", INFO). The probe is a CUDA context on device 0 created and
     * destroyed through the C ABI; its failure message (the CPU build was loaded, no device, …) is
     * the reason for the CPU. The system property {@value #BACKEND_PROPERTY} = cpu or cuda skips
     * the probe.
     */
    public static BackendChoice defaultBackend() {
        if (choice == null) {
            synchronized (NativeLibrary.class) {
                if (choice == null) {
                    BackendChoice c = probe();
                    LOG.log(System.Logger.Level.INFO, "mla4j: default backend " + c.backend() + " (" + c.reason()
                            + "); libmla " + path());
                    choice = c;
                }
            }
        }
        return choice;
    }

    private static BackendChoice probe() {
        load();
        String forced = System.getProperty(BACKEND_PROPERTY, "auto").trim().toLowerCase(Locale.ROOT);
        switch (forced) {
            case "cpu" -> {
                return new BackendChoice(MlaContext.Backend.CPU, "system property " + BACKEND_PROPERTY + "=cpu");
            }
            case "cuda" -> {
                return new BackendChoice(MlaContext.Backend.CUDA, "system property " + BACKEND_PROPERTY + "=cuda");
            }
            case "auto", "" -> {
            }
            default -> throw new IllegalArgumentException(BACKEND_PROPERTY + " = \"" + forced
                    + "\", expected cpu, cuda or auto");
        }
        String reason = cudaUnavailableReason();
        if (reason == null) {
            try (MlaContext ctx = MlaContext.cuda(0)) {
                return new BackendChoice(MlaContext.Backend.CUDA, "CUDA device 0 available: " + ctx.describe());
            }
        }
        return new BackendChoice(MlaContext.Backend.CPU, "no CUDA device: " + reason);
    }

    /**
     * Null when a CUDA context on device 0 can be created, else libmla's message saying why not
     * (no driver, no device, built without CUDA). Creates and destroys a context: not free on a GPU
     * machine (the CUDA runtime initializes), instant without a driver.
     */
    public static String cudaUnavailableReason() {
        load();
        try (java.lang.foreign.Arena tmp = java.lang.foreign.Arena.ofConfined()) {
            java.lang.foreign.MemorySegment opts = dev.mla4j.bindings.mla_context_options.allocate(tmp);
            Native.check(Mla.mla_context_options_init(opts), "mla_context_options_init");
            dev.mla4j.bindings.mla_context_options.backend(opts, MlaContext.Backend.CUDA.code);
            dev.mla4j.bindings.mla_context_options.device(opts, 0);
            java.lang.foreign.MemorySegment out = tmp.allocate(java.lang.foreign.ValueLayout.ADDRESS);
            int st = Mla.mla_context_create(opts, out);
            if (st != 0) {
                return Native.string(Mla.mla_status_string(st)) + ": " + Native.lastError();
            }
            Mla.mla_context_destroy(out.get(java.lang.foreign.ValueLayout.ADDRESS, 0));
            return null;
        }
    }

    /** The build that was loaded (after {@link #load()}) and why that one. */
    public static Build build() {
        load();
        return loaded.build;
    }

    /** The file that was loaded (after {@link #load()}). */
    public static Path path() {
        load();
        return loaded.path;
    }

    /** Where the library came from: "system property mla4j.library.path", "environment MLA4J_LIBRARY" or "bundled". */
    public static String source() {
        load();
        return loaded.source;
    }

    /** mla_version() of the loaded library: MAJOR * 10000 + MINOR * 100 + PATCH. */
    public static int version() {
        load();
        return loaded.version;
    }

    /** mla_abi_version() of the loaded library. */
    public static int abiVersion() {
        load();
        return loaded.abiVersion;
    }

    private static Loaded doLoad() {
        String source;
        Path path;
        Build build;
        String property = System.getProperty(PATH_PROPERTY);
        String env = System.getenv(PATH_ENV);
        if (property != null && !property.isBlank()) {
            source = "system property " + PATH_PROPERTY;
            path = Path.of(property);
            build = new Build("external", "named by " + source);
        } else if (env != null && !env.isBlank()) {
            source = "environment " + PATH_ENV;
            path = Path.of(env);
            build = new Build("external", "named by " + source);
        } else {
            source = "bundled";
            Bundled b = extractBundled();
            path = b.path();
            build = b.build();
        }
        path = path.toAbsolutePath();
        if (!Files.isRegularFile(path)) {
            throw new UnsatisfiedLinkError("libmla not found at " + path + " (from " + source + ")");
        }
        try {
            System.load(path.toString());
        } catch (IllegalCallerException e) {
            throw new IllegalStateException(NATIVE_ACCESS_HINT, e);
        } catch (UnsatisfiedLinkError e) {
            UnsatisfiedLinkError error = new UnsatisfiedLinkError("cannot load libmla from " + path + " (from " + source
                    + "): " + e.getMessage());
            error.initCause(e);
            throw error;
        }
        int abi;
        int version;
        try {
            abi = Mla.mla_abi_version();
            version = Mla.mla_version();
        } catch (IllegalCallerException e) {
            throw new IllegalStateException(NATIVE_ACCESS_HINT, e);
        } catch (ExceptionInInitializerError e) {
            if (e.getCause() instanceof IllegalCallerException) {
                throw new IllegalStateException(NATIVE_ACCESS_HINT, e.getCause());
            }
            if (e.getCause() instanceof java.util.NoSuchElementException) {
                UnsatisfiedLinkError error = new UnsatisfiedLinkError(path + " (from " + source
                        + ") does not export mla_abi_version/mla_version: it is not libmla, or one too old for"
                        + " these bindings");
                error.initCause(e.getCause());
                throw error;
            }
            throw e;
        }
        int expected = Mla.MLA_ABI_VERSION();
        if (abi != expected) {
            throw new UnsatisfiedLinkError("libmla at " + path + " (from " + source + ") has ABI version " + abi
                    + ", but these bindings were generated for ABI version " + expected
                    + ": use the libmla built from the same mla.h as this jar (unset " + PATH_PROPERTY + " / "
                    + PATH_ENV + " to use the bundled copy)");
        }
        LOG.log(System.Logger.Level.INFO, "mla4j: loaded libmla " + build.variant() + " build " + path + " ("
                + build.reason() + ")");
        return new Loaded(path, source, version, abi, build);
    }

    /** Picks the bundled build: the CUDA one where it is bundled and a driver loads, unless forced. */
    private static Build chooseBundled(boolean hasCuda) {
        String forced = System.getProperty(BACKEND_PROPERTY, "auto").trim().toLowerCase(Locale.ROOT);
        switch (forced) {
            case "cpu" -> {
                return new Build("cpu", "system property " + BACKEND_PROPERTY + "=cpu");
            }
            case "cuda" -> {
                if (!hasCuda) {
                    throw new UnsatisfiedLinkError("system property " + BACKEND_PROPERTY + "=cuda, but this mla4j jar "
                            + "has no CUDA build of libmla (it was built where nvcc was not found)");
                }
                return new Build("cuda", "system property " + BACKEND_PROPERTY + "=cuda");
            }
            case "auto", "" -> {
            }
            default -> throw new IllegalArgumentException(BACKEND_PROPERTY + " = \"" + forced
                    + "\", expected cpu, cuda or auto");
        }
        if (!hasCuda) {
            return new Build("cpu", "this jar has no CUDA build (it was built where nvcc was not found)");
        }
        String problem = nvidiaDriverProblem();
        return problem == null ? new Build("cuda", "NVIDIA driver found (libcuda.so.1 loads)")
                : new Build("cpu", "no NVIDIA driver: " + problem);
    }

    /** Null when the NVIDIA driver library loads (it is unloaded again), else why not. */
    private static String nvidiaDriverProblem() {
        try (java.lang.foreign.Arena arena = java.lang.foreign.Arena.ofConfined()) {
            java.lang.foreign.SymbolLookup.libraryLookup("libcuda.so.1", arena);
            return null;
        } catch (IllegalCallerException e) {
            throw new IllegalStateException(NATIVE_ACCESS_HINT, e);
        } catch (IllegalArgumentException e) {
            return "libcuda.so.1 cannot be loaded (" + e.getMessage() + ")";
        }
    }

    private static Bundled extractBundled() {
        Properties props = new Properties();
        try (InputStream in = NativeLibrary.class.getResourceAsStream("native/mla4j-native.properties")) {
            if (in == null) {
                throw new UnsatisfiedLinkError("this mla4j jar has no dev/mla4j/native/mla4j-native.properties; "
                        + "set -D" + PATH_PROPERTY + "=/path/to/libmla.so");
            }
            props.load(in);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        String platform = platform();
        String bundledPlatform = props.getProperty("platform");
        if (!platform.equals(bundledPlatform)) {
            throw new UnsatisfiedLinkError("this mla4j jar bundles libmla for " + bundledPlatform + ", not for "
                    + platform + "; build libmla for this platform and set -D" + PATH_PROPERTY + "=/path/to/libmla");
        }
        String cudaResource = props.getProperty("resource.cuda");
        boolean hasCuda = cudaResource != null && NativeLibrary.class.getClassLoader().getResource(cudaResource) != null;
        Build build = chooseBundled(hasCuda);
        String resource = props.getProperty("cuda".equals(build.variant()) ? "resource.cuda" : "resource.cpu");
        byte[] bytes;
        try (InputStream in = NativeLibrary.class.getClassLoader().getResourceAsStream(resource)) {
            if (in == null) {
                throw new UnsatisfiedLinkError("libmla is not bundled in this jar (missing resource " + resource
                        + "); set -D" + PATH_PROPERTY + "=/path/to/libmla.so");
            }
            bytes = in.readAllBytes();
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read bundled " + resource, e);
        }
        String hash = sha256(bytes).substring(0, 16);
        String fileName = resource.substring(resource.lastIndexOf('/') + 1);
        String user = System.getProperty("user.name", "user").replaceAll("[^A-Za-z0-9_.-]", "_");
        Path userDir = Path.of(System.getProperty("java.io.tmpdir"), "mla4j-" + user);
        Path dir = userDir.resolve(hash);
        Path target = dir.resolve(fileName);
        try {
            createPrivateDirectory(userDir);
            createPrivateDirectory(dir);
            if (Files.isRegularFile(target) && Files.size(target) == bytes.length
                    && sha256(Files.readAllBytes(target)).startsWith(hash)) {
                return new Bundled(target, build);
            }
            Path tmp = Files.createTempFile(dir, fileName, ".part");
            try {
                Files.write(tmp, bytes);
                try {
                    Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
                } catch (AtomicMoveNotSupportedException e) {
                    Files.move(tmp, target, StandardCopyOption.REPLACE_EXISTING);
                }
            } finally {
                Files.deleteIfExists(tmp);
            }
            return new Bundled(target, build);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot extract bundled libmla to " + target
                    + " (set java.io.tmpdir, or -D" + PATH_PROPERTY + "=/path/to/libmla.so)", e);
        }
    }

    /**
     * Creates dir (owner-only on POSIX) if absent and checks, on POSIX file systems, that it is a
     * real directory owned by this user that no other user can write: the temporary directory is
     * shared, and a directory another user controls could have the library swapped between its
     * check and its load.
     */
    private static void createPrivateDirectory(Path dir) throws IOException {
        boolean posix = dir.getFileSystem().supportedFileAttributeViews().contains("posix");
        if (!Files.exists(dir, LinkOption.NOFOLLOW_LINKS)) {
            try {
                if (posix) {
                    Files.createDirectory(dir, PosixFilePermissions.asFileAttribute(
                            PosixFilePermissions.fromString("rwx------")));
                } else {
                    Files.createDirectory(dir);
                }
            } catch (FileAlreadyExistsException raced) {
                // another JVM created it: checked below like any existing directory
            }
        }
        if (!posix) {
            return;
        }
        PosixFileAttributes a = Files.readAttributes(dir, PosixFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
        String me = System.getProperty("user.name", "");
        Set<PosixFilePermission> p = a.permissions();
        if (!a.isDirectory() || !a.owner().getName().equals(me) || p.contains(PosixFilePermission.GROUP_WRITE)
                || p.contains(PosixFilePermission.OTHERS_WRITE)) {
            throw new UnsatisfiedLinkError("will not extract libmla into " + dir + ": it must be a directory owned by "
                    + me + " and not writable by other users (it is " + (a.isDirectory() ? "a directory" : "not a directory")
                    + " owned by " + a.owner().getName() + ", " + PosixFilePermissions.toString(p) + "); remove it, or set "
                    + "java.io.tmpdir, or -D" + PATH_PROPERTY + "=/path/to/libmla.so");
        }
    }

    /** This JVM's platform in the bundled-library directory naming, e.g. "linux-x86_64". */
    static String platform() {
        String os = System.getProperty("os.name", "").toLowerCase(Locale.ROOT);
        String arch = System.getProperty("os.arch", "").toLowerCase(Locale.ROOT);
        String o = os.startsWith("linux") ? "linux" : os.startsWith("mac") ? "darwin" : os.startsWith("windows") ? "windows" : os;
        String a = switch (arch) {
            case "amd64", "x86_64" -> "x86_64";
            case "aarch64", "arm64" -> "aarch64";
            default -> arch;
        };
        return o + "-" + a;
    }

    private static String sha256(byte[] bytes) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(bytes));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}
