package buck2.workers.javac;

import java.io.BufferedInputStream;
import java.io.ByteArrayOutputStream;
import java.io.FileOutputStream;
import java.io.FileDescriptor;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import javax.tools.JavaCompiler;
import javax.tools.ToolProvider;

/**
 * A javac persistent worker: compiles in-process with javax.tools, one request per thread.
 *
 * <p>With {@code --persistent_worker} it serves Bazel's worker protocol on stdin/stdout (proto
 * or JSON, told apart by the first byte; singleplex or multiplex). Without it, it compiles
 * once from its arguments and exits with javac's code: the one-shot fallback. Either way
 * {@code @argfiles} are expanded by {@link Argfiles} (the project's one rule, one argument per
 * line), never by javac's own reader, so an action gets the same arguments warm and cold.
 */
public final class JavacWorker {
  private static final JavaCompiler JAVAC = ToolProvider.getSystemJavaCompiler();

  /** Exit code of an action whose argument files cannot be expanded (the runtime's, too). */
  static final int ARGFILE_EXIT_CODE = 125;

  private final OutputStream protocolOut;
  private final WireFormat.Writer writer;
  /** A multiplex request in flight; a cancel marks it, and it answers was_cancelled. */
  private static final class InFlight {
    volatile boolean cancelled;
  }

  /** Multiplex requests in flight, by id (an id is in flight until it is answered). */
  private final Map<Integer, InFlight> inFlight = new ConcurrentHashMap<>();

  private JavacWorker(OutputStream protocolOut, WireFormat.Writer writer) {
    this.protocolOut = protocolOut;
    this.writer = writer;
  }

  public static void main(String[] args) throws Exception {
    boolean persistent = false;
    for (String arg : args) {
      persistent |= arg.equals("--persistent_worker");
    }
    if (!persistent) {
      String[] expanded;
      try {
        expanded = oneShotArguments(args, java.nio.file.Path.of(""));
      } catch (Argfiles.ArgfileException e) {
        System.err.println("javac-worker: " + e.getMessage());
        System.exit(ARGFILE_EXIT_CODE);
        return;
      }
      System.exit(compile(expanded, System.err));
    }
    // A multiplex thread that dies unexpectedly must not leave a request unanswered.
    Thread.setDefaultUncaughtExceptionHandler(
        (thread, error) -> {
          System.err.println("javac-worker: fatal error in " + thread.getName() + ": " + error);
          System.exit(5);
        });
    // Nothing but responses may reach the real stdout: everything else goes to stderr.
    OutputStream stdout = new FileOutputStream(FileDescriptor.out);
    System.setOut(new PrintStream(new FileOutputStream(FileDescriptor.err), true, "UTF-8"));
    boolean[] isJson = new boolean[1];
    InputStream in = WireFormat.peek(new BufferedInputStream(System.in), isJson);
    boolean json = isJson[0];
    WireFormat.Reader reader = json ? new WireFormat.JsonReader(in) : new WireFormat.ProtoReader(in);
    JavacWorker worker =
        new JavacWorker(stdout, json ? new WireFormat.JsonWriter() : new WireFormat.ProtoWriter());
    worker.serve(reader);
  }

  private void serve(WireFormat.Reader reader) throws Exception {
    java.util.List<Thread> threads = new java.util.ArrayList<>();
    while (true) {
      WireFormat.Request request = reader.read();
      if (request == null) {
        // End of input: answer what is in flight before exiting.
        for (Thread thread : threads) {
          thread.join();
        }
        return;
      }
      threads.removeIf(thread -> !thread.isAlive());
      if (request.verbosity > 0) {
        System.err.println("javac-worker: request " + request.requestId + ": " + request.arguments);
      }
      if (request.cancel) {
        // javac cannot be interrupted safely: the compile finishes, and its request is then
        // answered was_cancelled (never touching the output directory after answering).
        // A cancel of a request already answered is ignored.
        InFlight state = inFlight.get(request.requestId);
        if (state != null) {
          state.cancelled = true;
        }
        continue;
      }
      if (request.requestId == 0) {
        handle(request, null); // singleplex: one at a time, in order
      } else {
        InFlight state = new InFlight();
        if (inFlight.putIfAbsent(request.requestId, state) != null) {
          respond(1, "javac-worker: request id " + request.requestId + " is already in flight", request.requestId, false);
          continue;
        }
        Thread thread = new Thread(() -> handle(request, state), "javac-request-" + request.requestId);
        thread.setDaemon(true);
        thread.start();
        threads.add(thread);
      }
    }
  }

  private void handle(WireFormat.Request request, InFlight state) {
    ByteArrayOutputStream diagnostics = new ByteArrayOutputStream();
    int code;
    try (PrintStream out = new PrintStream(diagnostics, true, StandardCharsets.UTF_8)) {
      String[] args = null;
      try {
        args = requestArguments(request.arguments, request.sandboxDir);
      } catch (Argfiles.ArgfileException e) {
        out.println("javac-worker: " + e.getMessage());
      }
      code = args == null ? ARGFILE_EXIT_CODE : compile(args, out);
    } catch (OutOfMemoryError e) {
      System.err.println("javac-worker: out of memory; exiting so that a fresh worker starts");
      System.exit(3);
      return;
    } catch (Throwable e) {
      StringWriter trace = new StringWriter();
      e.printStackTrace(new PrintWriter(trace));
      diagnostics.writeBytes(("javac-worker: internal error\n" + trace).getBytes(StandardCharsets.UTF_8));
      code = 1;
    }
    if (state != null) {
      inFlight.remove(request.requestId, state);
      if (state.cancelled) {
        respond(0, "", request.requestId, true);
        return;
      }
    }
    respond(code, diagnostics.toString(StandardCharsets.UTF_8), request.requestId, false);
  }

  private void respond(int exitCode, String output, int requestId, boolean cancelled) {
    byte[] bytes = writer.encode(exitCode, output, requestId, cancelled);
    synchronized (protocolOut) {
      try {
        protocolOut.write(bytes);
        protocolOut.flush();
      } catch (java.io.IOException e) {
        System.err.println("javac-worker: cannot write a response: " + e);
        System.exit(4);
      }
    }
  }

  /** Options whose value is a path, or a list of paths separated by ':'. */
  private static final java.util.Set<String> PATH_OPTIONS =
      java.util.Set.of(
          "-d", "-s", "-h", "-cp", "-classpath", "--class-path", "-sourcepath", "--source-path",
          "-processorpath", "--processor-path", "-p", "--module-path", "--module-source-path",
          "--system", "--upgrade-module-path");

  /** What javac gets in one-shot mode: the command line, @argfiles expanded in {@code cwd}. */
  static String[] oneShotArguments(String[] args, java.nio.file.Path cwd)
      throws Argfiles.ArgfileException {
    return Argfiles.expand(java.util.List.of(args), cwd).toArray(new String[0]);
  }

  /**
   * What javac gets for a request: its arguments, any @argfile left in them expanded (clients
   * such as the runtime and Bazel expand them first, so this is usually a no-op), relative to
   * {@code sandboxDir} when there is one, and then every path moved into it.
   */
  static String[] requestArguments(java.util.List<String> arguments, String sandboxDir)
      throws Argfiles.ArgfileException {
    if (sandboxDir.isEmpty()) {
      return Argfiles.expand(arguments, java.nio.file.Path.of("")).toArray(new String[0]);
    }
    java.nio.file.Path sandbox = java.nio.file.Path.of(sandboxDir).toAbsolutePath();
    return inSandbox(Argfiles.expand(arguments, sandbox).toArray(new String[0]), sandbox);
  }

  /**
   * Multiplex sandboxing: every relative path in the (expanded) request, source files and
   * option values alike, is relative to {@code sandbox} (javac itself resolves against the
   * process's working directory, which threads share).
   */
  static String[] inSandbox(String[] args, java.nio.file.Path sandbox) {
    java.util.List<String> out = new java.util.ArrayList<>();
    for (int i = 0; i < args.length; i++) {
      String arg = args[i];
      if (PATH_OPTIONS.contains(arg) && i + 1 < args.length) {
        out.add(arg);
        StringBuilder paths = new StringBuilder();
        for (String path : args[++i].split(":", -1)) {
          if (paths.length() > 0) {
            paths.append(':');
          }
          paths.append(path.isEmpty() ? path : sandbox.resolve(path));
        }
        out.add(paths.toString());
      } else if (!arg.startsWith("-") && (i == 0 || !args[i - 1].startsWith("-") || PATH_OPTIONS.contains(args[i - 1]) || isFlag(args[i - 1]))) {
        out.add(sandbox.resolve(arg).toString());
      } else {
        out.add(arg);
      }
    }
    return out.toArray(new String[0]);
  }

  /** Options that take no value, so what follows them is a source file. */
  private static boolean isFlag(String option) {
    return option.equals("-g") || option.equals("-nowarn") || option.equals("-deprecation")
        || option.equals("-verbose") || option.equals("-parameters") || option.startsWith("-Xlint")
        || option.startsWith("-g:") || option.equals("-Werror") || option.startsWith("-J")
        || option.startsWith("-proc:") || option.startsWith("-implicit:")
        || option.equals("--enable-preview") || option.startsWith("-A");
  }

  /** Runs javac once; its diagnostics (javac's usual format) go to {@code diagnostics}. */
  static int compile(String[] args, PrintStream diagnostics) {
    return JAVAC.run(null, diagnostics, diagnostics, args);
  }
}
