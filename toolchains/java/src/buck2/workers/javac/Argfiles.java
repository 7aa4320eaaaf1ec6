package buck2.workers.javac;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.InvalidPathException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Pattern;

/**
 * {@code @argfile} expansion by the project's one rule (docs/argfiles.md), as the runtime
 * does it for the warm path: {@code @path} (not {@code @@...}, not a bare {@code @}, not a
 * label such as {@code @repo//pkg:target}) becomes the file's lines, one argument per line verbatim (LF, CRLF or CR ends a line; empty lines
 * are empty arguments), recursively; {@code --flagfile=} passes through. javac's own
 * {@code @file} reading (split on white space, quotes) is never what expands a Buck2 argfile.
 */
final class Argfiles {
  /** At most this many argument files nested in one another (the outermost counts). */
  static final int MAX_DEPTH = 16;

  private Argfiles() {}

  /** An argument file that cannot be expanded; the message names it. */
  static final class ArgfileException extends Exception {
    private static final long serialVersionUID = 1L;

    ArgfileException(String name, String what) {
      super("argument file '" + name + "' " + what);
    }
  }

  /**
   * A label of another repository ({@code @repo//pkg:target}), which Bazel passes through:
   * {@code //} after the {@code @}, and no line break ({@code .} matches none).
   */
  private static final Pattern REPOSITORY_LABEL = Pattern.compile("@.*//.*");

  /**
   * True for an argument that is expanded: {@code @path}, not {@code @@...}, a bare {@code @}
   * nor a repository label.
   */
  static boolean isArgfile(String arg) {
    return arg.length() > 1
        && arg.charAt(0) == '@'
        && arg.charAt(1) != '@'
        && !REPOSITORY_LABEL.matcher(arg).matches();
  }

  /** {@code args} with every {@code @path} expanded, paths (nested ones too) relative to {@code base}. */
  static List<String> expand(List<String> args, Path base) throws ArgfileException {
    List<String> out = new ArrayList<>(args.size());
    expandInto(out, args, base, new ArrayList<>());
    return out;
  }

  private static void expandInto(List<String> out, List<String> args, Path base, List<Path> chain)
      throws ArgfileException {
    for (String arg : args) {
      if (!isArgfile(arg)) {
        out.add(arg);
        continue;
      }
      String name = arg.substring(1);
      Path path;
      try {
        path = base.resolve(name);
      } catch (InvalidPathException e) {
        throw new ArgfileException(name, "cannot be read: " + e.getReason());
      }
      if (!Files.exists(path)) {
        throw new ArgfileException(name, "does not exist (looked in " + base.toAbsolutePath() + ")");
      }
      Path real;
      byte[] data;
      try {
        real = path.toRealPath();
      } catch (IOException e) {
        throw new ArgfileException(name, "cannot be read: " + e);
      }
      if (chain.contains(real)) {
        throw new ArgfileException(name, "includes itself (through " + chain + ")");
      }
      if (chain.size() >= MAX_DEPTH) {
        throw new ArgfileException(name, "nests more than " + MAX_DEPTH + " argument files");
      }
      try {
        data = Files.readAllBytes(path);
      } catch (IOException e) {
        String reason = Files.isDirectory(path) ? "Is a directory" : e.toString();
        throw new ArgfileException(name, "cannot be read: " + reason);
      }
      for (byte b : data) {
        if (b == 0) {
          throw new ArgfileException(name, "contains a NUL byte; no argument can hold one");
        }
      }
      String text;
      try {
        text =
            StandardCharsets.UTF_8
                .newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT)
                .decode(ByteBuffer.wrap(data))
                .toString();
      } catch (CharacterCodingException e) {
        throw new ArgfileException(name, "is not valid UTF-8; arguments are text");
      }
      chain.add(real);
      expandInto(out, lines(text), base, chain);
      chain.remove(chain.size() - 1);
    }
  }

  /** One argument per line: LF, CRLF or a lone CR ends a line, the last one's is optional. */
  static List<String> lines(String text) {
    List<String> lines = new ArrayList<>();
    int start = 0;
    int i = 0;
    while (i < text.length()) {
      char c = text.charAt(i);
      if (c == '\n' || c == '\r') {
        lines.add(text.substring(start, i));
        i += (c == '\r' && i + 1 < text.length() && text.charAt(i + 1) == '\n') ? 2 : 1;
        start = i;
      } else {
        i++;
      }
    }
    if (start < text.length()) {
      lines.add(text.substring(start));
    }
    return lines;
  }
}
