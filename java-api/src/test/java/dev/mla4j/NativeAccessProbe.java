package dev.mla4j;

/** Run in a child JVM by NativeLibraryTest: loads libmla and reports the outcome on stdout. */
public final class NativeAccessProbe {
    private NativeAccessProbe() {
    }

    public static void main(String[] args) {
        try {
            NativeLibrary.load();
            try (MlaContext ctx = MlaContext.cpu(1)) {
                System.out.println("loaded " + NativeLibrary.source() + " " + NativeLibrary.path() + " " + ctx.describe()
                        + " build " + NativeLibrary.build().variant() + " (" + NativeLibrary.build().reason() + ")");
            }
        } catch (Throwable t) {
            System.out.println("failed " + t.getClass().getName() + ": " + t.getMessage());
            System.exit(3);
        }
    }
}
