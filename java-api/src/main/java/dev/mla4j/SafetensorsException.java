package dev.mla4j;

import java.io.IOException;

/** A safetensors file (or shard index) is malformed; the message names the file and the tensor or field. */
public class SafetensorsException extends IOException {
    private static final long serialVersionUID = 1L;

    public SafetensorsException(String message) {
        super(message);
    }

    public SafetensorsException(String message, Throwable cause) {
        super(message, cause);
    }
}
