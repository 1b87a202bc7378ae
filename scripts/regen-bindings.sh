#!/usr/bin/env bash
# Regenerates the Panama bindings of native/include/mla.h into bindings/src/main/java
# (package dev.mla4j.bindings, header class Mla) and records the header's sha256 in
# bindings/mla.h.sha256, which the bindings module's build checks.
#
# Needs a jextract for JDK 22+ on PATH (https://github.com/openjdk/jextract). The generated
# sources are committed: never edit them by hand, rerun this script after changing mla.h.
#
# The symbols are an explicit allow-list; the script fails when the header declares an
# mla_* function, struct, typedef or MLA_* constant that the list does not name, so a new API
# function cannot be silently left out of the bindings. No -l option: the generated code looks
# symbols up with SymbolLookup.loaderLookup(), after dev.mla4j.NativeLibrary has System.load()ed
# the right libmla.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
header="$root/native/include/mla.h"
out="$root/bindings/src/main/java"
package=dev.mla4j.bindings

if ! command -v jextract >/dev/null 2>&1; then
  echo "regen-bindings: jextract not found on PATH." >&2
  echo "  Install a jextract build for JDK 22 or newer (https://github.com/openjdk/jextract)" >&2
  echo "  and put its bin/ directory on PATH, then rerun $0." >&2
  exit 1
fi

functions=(
  mla_version mla_abi_version mla_status_string mla_last_error
  mla_config_init mla_config_validate mla_config_softmax_scale mla_config_rope_tables
  mla_context_options_init mla_context_create mla_context_destroy mla_context_describe
  mla_context_backend
  mla_cache_options_init mla_cache_create mla_cache_destroy mla_cache_get_view mla_cache_bytes
  mla_cache_read mla_cache_copy_blocks
  mla_compress_params_init mla_compress
  mla_attention_params_init mla_attention_workspace_size mla_attention_plan mla_attention_run
  mla_layer_weights_init mla_layer_options_init mla_layer_create mla_layer_destroy
  mla_layer_get_config mla_batch_init mla_layer_forward
  mla_buffer_create mla_buffer_wrap mla_buffer_destroy mla_buffer_data mla_buffer_upload
  mla_buffer_download mla_stream_create mla_stream_destroy mla_stream_synchronize
  mla_context_memory_info
)
structs=(
  mla_config mla_context_options mla_cache_view mla_cache_options mla_compress_params
  mla_attention_params mla_weight mla_layer_weights mla_layer_options mla_batch
)
# Opaque handles (declared, never defined): they cross the ABI as plain pointers.
opaque=(mla_context mla_cache mla_layer mla_buffer)
typedefs=(mla_status)
constants=(
  MLA_VERSION_MAJOR MLA_VERSION_MINOR MLA_VERSION_PATCH MLA_VERSION_NUMBER MLA_ABI_VERSION
  MLA_OK MLA_ERROR_INVALID_ARGUMENT MLA_ERROR_UNSUPPORTED MLA_ERROR_OUT_OF_MEMORY
  MLA_ERROR_CACHE_FULL MLA_ERROR_BUFFER_TOO_SMALL MLA_ERROR_DEVICE MLA_ERROR_INTERNAL
  MLA_ERROR_CANCELLED
  MLA_DTYPE_F32 MLA_DTYPE_BF16 MLA_DTYPE_F16 MLA_DTYPE_FP8_E4M3
  MLA_BACKEND_CPU MLA_BACKEND_CUDA
  MLA_ROPE_SCALING_NONE MLA_ROPE_SCALING_YARN
  MLA_SIMD_AUTO MLA_SIMD_SCALAR MLA_SIMD_AVX2 MLA_SIMD_AVX512
)

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# 1. Every symbol the header declares must be on the allow-list (or be an opaque handle).
jextract --dump-includes "$tmp/includes.txt" "$header" >/dev/null
declared="$(grep -E '^--include-' "$tmp/includes.txt" | grep -F "$header" | awk '{print $2}' | sort)"
listed="$(printf '%s\n' "${functions[@]}" "${structs[@]}" "${opaque[@]}" "${typedefs[@]}" \
  "${constants[@]}" | sort)"
missing="$(comm -23 <(echo "$declared") <(echo "$listed"))"
if [ -n "$missing" ]; then
  echo "regen-bindings: mla.h declares symbols that are not on this script's allow-list:" >&2
  echo "$missing" | sed 's/^/  /' >&2
  echo "  Add each one to the matching list in $0 and rerun it." >&2
  exit 1
fi
stale="$(comm -13 <(echo "$declared") <(echo "$listed"))"
if [ -n "$stale" ]; then
  echo "regen-bindings: the allow-list names symbols mla.h no longer declares:" >&2
  echo "$stale" | sed 's/^/  /' >&2
  echo "  Remove them from $0 and rerun it." >&2
  exit 1
fi

# 2. Generate into a scratch directory, then replace the package directory as a whole so that
#    files of symbols removed from the header disappear too.
args=(--target-package "$package" --header-class-name Mla --output "$tmp/gen")
for s in "${functions[@]}"; do args+=(--include-function "$s"); done
for s in "${structs[@]}"; do args+=(--include-struct "$s"); done
for s in "${typedefs[@]}"; do args+=(--include-typedef "$s"); done
for s in "${constants[@]}"; do args+=(--include-constant "$s"); done
jextract "${args[@]}" "$header"

pkgdir="$out/${package//.//}"
rm -rf "$pkgdir"
mkdir -p "$(dirname "$pkgdir")"
cp -r "$tmp/gen/${package//.//}" "$pkgdir"

# 3. Record the header the bindings were made from (sha256sum format, path relative to the root).
(cd "$root" && sha256sum native/include/mla.h) > "$root/bindings/mla.h.sha256"

echo "regen-bindings: wrote $(find "$pkgdir" -name '*.java' | wc -l) files to ${pkgdir#$root/}"
echo "regen-bindings: recorded $(cut -d' ' -f1 "$root/bindings/mla.h.sha256") in bindings/mla.h.sha256"
