# Sourced by scripts/*.sh: exports JAVA_HOME pointing at a JDK 25 or newer, keeping the caller's
# JAVA_HOME when it already is one, else the newest JDK under /usr/lib/jvm. Returns 1 (with a
# message naming the caller) when there is none.
java_major() { # prints the feature version of the JDK at $1, or 0
  local v
  v="$("$1/bin/java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
  [[ "$v" =~ ^[0-9]+$ ]] && echo "$v" || echo 0
}

find_java_home() { # $1: the calling script's name, for messages
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/javac" ] && [ "$(java_major "$JAVA_HOME")" -ge 25 ]; then
    return 0
  fi
  local best="" best_v=0 jdk v
  for jdk in /usr/lib/jvm/*; do
    [ -x "$jdk/bin/javac" ] || continue
    v="$(java_major "$jdk")"
    if [ "$v" -gt "$best_v" ]; then best="$jdk"; best_v="$v"; fi
  done
  if [ "$best_v" -lt 25 ]; then
    echo "$1: no JDK 25 or newer found (JAVA_HOME='${JAVA_HOME:-}', /usr/lib/jvm has none)." >&2
    echo "  Install one (e.g. Temurin 25) and set JAVA_HOME." >&2
    return 1
  fi
  export JAVA_HOME="$best"
}
