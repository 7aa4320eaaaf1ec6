package buck2.workers.javac;

import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * Test driver (never part of the worker's build): runs the javac worker's own argument
 * handling on jobs read from stdin, JSON objects back to back:
 *
 * <ul>
 *   <li>{@code {"mode": "one-shot", "dir": D, "args": [...]}}: what javac gets in one-shot mode
 *       (the fallback) for that command line, run in directory D;
 *   <li>{@code {"mode": "request", "args": [...]}}: what javac gets for a WorkRequest with these
 *       arguments (the warm path, after the runtime expanded them), no sandbox_dir.
 * </ul>
 *
 * <p>Writes one line per job: {@code {"argv": [...]}} or {@code {"error": "message"}}.
 */
final class ArgfilesDriver {
  private ArgfilesDriver() {}

  public static void main(String[] unused) throws Exception {
    PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
    Json in = new Json(System.in);
    for (Object job = in.next(); job != null; job = in.next()) {
      Map<?, ?> fields = (Map<?, ?>) job;
      List<String> args = new ArrayList<>();
      for (Object arg : (List<?>) fields.get("args")) {
        args.add((String) arg);
      }
      String[] argv;
      try {
        if ("one-shot".equals(fields.get("mode"))) {
          Path dir = Path.of((String) fields.get("dir"));
          argv = JavacWorker.oneShotArguments(args.toArray(new String[0]), dir);
        } else {
          argv = JavacWorker.requestArguments(args, "");
        }
      } catch (Argfiles.ArgfileException e) {
        out.println("{\"error\":" + Json.quote(e.getMessage()) + "}");
        continue;
      }
      StringBuilder line = new StringBuilder("{\"argv\":[");
      for (int i = 0; i < argv.length; i++) {
        line.append(i == 0 ? "" : ",").append(Json.quote(argv[i]));
      }
      out.println(line.append("]}"));
    }
  }
}
