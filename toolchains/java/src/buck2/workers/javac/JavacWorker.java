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

  /** The worker's own messages: its stderr (System.err is a request's output while it runs). */
  private static final PrintStream LOG = System.err;

  /** Exit code of an action whose argument files cannot be expanded (the runtime's, too). */
  static final int ARGFILE_EXIT_CODE = 125;

  /** Exit code of a worker whose java has no compiler (a JRE's, or one without jdk.compiler). */
  static final int NO_COMPILER_EXIT_CODE = 6;

  /** JVM property naming the fd the launchers moved the protocol's stdout to. */
  static final String PROTOCOL_FD_PROPERTY = "buck2.workers.javac.protocolFd";

  /** JVM property naming the fd the launchers moved the protocol's stdin to. */
  static final String PROTOCOL_IN_FD_PROPERTY = "buck2.workers.javac.protocolInFd";

  private final OutputStream protocolOut;
  private final WireFormat.Writer writer;
  /** The startup arguments (without --persistent_worker): they come before every request's. */
  private final String[] startupArgs;
  /** A multiplex request in flight; a cancel marks it, and it answers was_cancelled. */
  private static final class InFlight {
    volatile boolean cancelled;
    /** Stops its compile once it runs (StoppableJavac), or null. */
    private volatile Runnable stop;

    /** Marks it cancelled, and stops its compile if one runs. */
    void cancel() {
      cancelled = true;
      Runnable running = stop;
      if (running != null) {
        running.run();
      }
    }

    /**
     * What stops its compile, from now on; run at once if it was cancelled already (each
     * side writes, then reads, the other's volatile field: at least one sees the other).
     */
    void stopWith(Runnable running) {
      stop = running;
      if (cancelled) {
        running.run();
      }
    }
    /** Counted down once the request is answered (or given up). */
    final java.util.concurrent.CountDownLatch answered = new java.util.concurrent.CountDownLatch(1);
    /** A cancelled request under the same id whose answer this one waits for, or null. */
    InFlight after;
  }

  /** Multiplex requests in flight, by id (an id is in flight until it is answered). */
  private final Map<Integer, InFlight> inFlight = new ConcurrentHashMap<>();

  /** JVM property: how many multiplex requests compile at once (default: the CPUs, at least 2). */
  static final String MAX_COMPILES_PROPERTY = "buck2.workers.javac.maxCompiles";

  /**
   * Compiles running at once in multiplex mode; the other requests wait their turn, in the
   * order they were read (a request under a cancelled one's id: from when that one is
   * answered). Each compile holds a javac and its trees in memory: without a bound, many
   * large requests at once ended in an OutOfMemoryError, which ends the worker and every
   * request in flight. Guarded by {@link #turns}, which is notified whenever a slot frees,
   * a request leaves the queue or takes a slot, or a waiting one is cancelled (one that
   * joins the queue needs no notice: only the head may go, and it looks for itself).
   */
  private int freeSlots = maxCompiles();

  /** The multiplex requests waiting for a slot, first come first served. */
  private final java.util.ArrayDeque<InFlight> queue = new java.util.ArrayDeque<>();

  private final Object turns = new Object();

  /** The property's value, at least 1 (0 or less would let no request compile, ever). */
  private static int maxCompiles() {
    int fallback = Math.max(2, Runtime.getRuntime().availableProcessors());
    int set = Integer.getInteger(MAX_COMPILES_PROPERTY, fallback);
    if (set < 1) {
      LOG.println(
          "javac-worker: -D" + MAX_COMPILES_PROPERTY + "=" + set + " lets nothing compile; "
              + "taking " + fallback + " (the CPUs, at least 2)");
      return fallback;
    }
    return set;
  }

  private JavacWorker(OutputStream protocolOut, WireFormat.Writer writer, String[] startupArgs) {
    this.protocolOut = protocolOut;
    this.writer = writer;
    this.startupArgs = startupArgs;
  }

  public static void main(String[] args) throws Exception {
    if (JAVAC == null) {
      // Every compile failed with an internal error (a NullPointerException) instead.
      LOG.println(
          "javac-worker: this java (java.home " + System.getProperty("java.home") + ") has no "
              + "Java compiler (the jdk.compiler module): run the worker with a JDK's java, "
              + "not a JRE's");
      System.exit(NO_COMPILER_EXIT_CODE);
      return;
    }
    java.util.List<String> startup = new java.util.ArrayList<>();
    for (String arg : args) {
      if (!arg.equals("--persistent_worker")) {
        startup.add(arg);
      }
    }
    boolean persistent = startup.size() < args.length;
    if (!persistent) {
      String[] expanded;
      try {
        expanded = oneShotArguments(args, java.nio.file.Path.of(""));
      } catch (Argfiles.ArgfileException e) {
        LOG.println("javac-worker: " + e.getMessage());
        System.exit(ARGFILE_EXIT_CODE);
        return;
      }
      System.exit(compile(expanded, System.err)); // one-shot: the real stderr
    }
    // A processor reading a resource of its jar (getResource().openStream()) goes through
    // the JVM's cache of open jar files, keyed by path: a jar rebuilt at the same path
    // would be read as it was, and one compile closing its processors' class loader
    // closed the jar under another reading it. Cold javac opens each afresh.
    java.net.URLConnection.setDefaultUseCaches("jar", false);
    // What lets a cancel cut javac's analysis short, made off the first request's path.
    AttributionStop.prepareInBackground();
    // Startup arguments (Bazel's: those of the spawn that are not @argfiles) are expanded
    // once, as in one-shot mode. They are the worker's, relative to its own working
    // directory, so they are never moved into a request's sandbox_dir.
    String[] startupArgs;
    try {
      startupArgs = oneShotArguments(startup.toArray(new String[0]), java.nio.file.Path.of(""));
    } catch (Argfiles.ArgfileException e) {
      LOG.println("javac-worker: " + e.getMessage());
      System.exit(ARGFILE_EXIT_CODE);
      return;
    }
    // Nothing but responses may reach the protocol's stdout. What a processor (or javac's
    // -Xprint) writes to System.out or System.err goes to its request's output, as a cold
    // javac's goes to the action's; anything else's to stderr.
    OutputStream stdout = protocolStream();
    System.setOut(RequestOutput.stream(new FileOutputStream(FileDescriptor.err)));
    System.setErr(RequestOutput.stream(new FileOutputStream(FileDescriptor.err)));
    // Nor may anything but this reader take from its stdin: a processor reading System.in
    // finds it empty (as a cold javac's, whose stdin is /dev/null), and so does a child
    // (the launchers moved the protocol's stdin off fd 0 too).
    InputStream requests = protocolInput();
    System.setIn(new java.io.ByteArrayInputStream(new byte[0]));
    boolean[] isJson = new boolean[1];
    InputStream in = WireFormat.peek(new BufferedInputStream(requests), isJson);
    boolean json = isJson[0];
    WireFormat.Reader reader = json ? new WireFormat.JsonReader(in) : new WireFormat.ProtoReader(in);
    JavacWorker worker =
        new JavacWorker(
            stdout, json ? new WireFormat.JsonWriter() : new WireFormat.ProtoWriter(), startupArgs);
    try {
      worker.serve(reader);
    } catch (Throwable e) {
      // A malformed or truncated request, or a fault of the worker's own: it ends (the
      // client starts another), whatever threads a processor left running.
      LOG.println("javac-worker: fatal error serving requests:");
      e.printStackTrace(LOG);
      System.exit(5);
    }
    // Ended, as a cold javac does, even if a processor left a thread running.
    System.exit(0);
  }

  /**
   * The protocol's stdout. The launchers move it to another fd (named by {@link
   * #PROTOCOL_FD_PROPERTY}) and point fd 1 at stderr, because System.setOut cannot stop what
   * writes to fd 1 itself: the JVM's -Xlog output, native code, a child started with
   * inheritIO. Without the property (java started by hand) it is fd 1.
   */
  private static OutputStream protocolStream() {
    String fd = System.getProperty(PROTOCOL_FD_PROPERTY);
    if (fd == null) {
      return new FileOutputStream(FileDescriptor.out);
    }
    return new FileOutputStream(inherited(fd, "stdout"));
  }

  /** The protocol's stdin: the fd named by {@link #PROTOCOL_IN_FD_PROPERTY}, else fd 0. */
  private static InputStream protocolInput() {
    String fd = System.getProperty(PROTOCOL_IN_FD_PROPERTY);
    if (fd == null) {
      return new java.io.FileInputStream(FileDescriptor.in);
    }
    return new java.io.FileInputStream(inherited(fd, "stdin"));
  }

  /**
   * The inherited fd itself, not /dev/fd/N opened again: a worker running as another uid
   * than the pipe's creator (a tenant on the executor) may use the pipe it was given but
   * not open it. FileDescriptor has no public way to name an fd, hence the launchers'
   * --add-opens java.base/java.io.
   */
  private static FileDescriptor inherited(String fd, String what) {
    try {
      FileDescriptor descriptor = new FileDescriptor();
      java.lang.reflect.Field number = FileDescriptor.class.getDeclaredField("fd");
      number.setAccessible(true);
      number.setInt(descriptor, Integer.parseInt(fd));
      return descriptor;
    } catch (ReflectiveOperationException | RuntimeException e) {
      LOG.println("javac-worker: cannot use the protocol's " + what + " (fd " + fd + "): " + e);
      System.exit(4);
      return null;
    }
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
      if (request.verbosity > 0 && !request.cancel) {
        LOG.println("javac-worker: request " + request.requestId + ": " + request.arguments);
      }
      if (request.cancel) {
        // javac cannot be interrupted, but it can be cut short: what is left of its
        // analysis, flow analysis and code generation skipped (StoppableJavac); its
        // request is answered was_cancelled once it has ended (never touching the output
        // directory after answering). A cancel of a request already answered is ignored.
        InFlight state = inFlight.get(request.requestId);
        if (state != null) {
          state.cancel();
          synchronized (turns) {
            turns.notifyAll(); // one waiting for a slot answers at once
          }
        }
        if (request.verbosity > 0) { // said once the compile has been told
          LOG.println("javac-worker: request " + request.requestId + ": " + request.arguments);
        }
        continue;
      }
      if (request.requestId == 0) {
        // Singleplex: one at a time, in order, each on a thread of its own as a multiplex
        // request is (and as a cold javac's is its own): what a processor leaves on its
        // thread (a context class loader it set, its thread-locals) goes with it.
        Thread thread = requestThread(() -> handle(request, null), "javac-request");
        thread.start();
        thread.join();
      } else {
        InFlight state = new InFlight();
        InFlight previous = inFlight.putIfAbsent(request.requestId, state);
        if (previous != null && previous.cancelled) {
          // Bazel sends a new request under the id of one it has cancelled before that one
          // is answered (bazelbuild/bazel#26251): it runs once that answer is written, and
          // a cancel from now on is its own.
          state.after = previous;
          inFlight.put(request.requestId, state);
        } else if (previous != null) {
          // The client's error. Any answer under this id would be taken for the first
          // request's (whose own answer would then come unmatched), and ending the worker
          // would stop it serving the client's other requests for one slip: so the
          // duplicate is dropped, unanswered, and said so on stderr.
          LOG.println(
              "javac-worker: ignored a request with id " + request.requestId
                  + ", which is already in flight (a client must not reuse an id before its"
                  + " answer): " + request.arguments);
          continue;
        }
        if (state.after == null) {
          synchronized (turns) {
            queue.add(state); // its place in line: the order requests are read
          }
        }
        Thread thread =
            requestThread(() -> handle(request, state), "javac-request-" + request.requestId);
        thread.start();
        threads.add(thread);
      }
    }
  }

  /** A request's own thread (not started). */
  private static Thread requestThread(Runnable handler, String name) {
    Thread thread = new Thread(handler, name);
    thread.setDaemon(true);
    // A request's own thread that dies unexpectedly must not leave its request
    // unanswered. (Threads a processor starts keep the JVM's default: a cold javac
    // prints their exception and goes on, and so does this worker.)
    thread.setUncaughtExceptionHandler(
        (dead, error) -> {
          LOG.println("javac-worker: fatal error in " + dead.getName() + ": " + error);
          System.exit(5);
        });
    return thread;
  }

  private void handle(WireFormat.Request request, InFlight state) {
    try {
      if (state != null && !awaitTurn(state)) {
        // Cancelled while it waited: answered at once, nothing compiled.
        inFlight.remove(request.requestId, state);
        respond(0, "", request.requestId, true);
        return;
      }
      try {
        compileAndRespond(request, state);
      } finally {
        if (state != null) {
          synchronized (turns) {
            freeSlots++;
            turns.notifyAll();
          }
        }
      }
    } finally {
      if (state != null) {
        state.answered.countDown();
      }
    }
  }

  /**
   * Waits for the answer of the cancelled request under the same id, if any, then for a
   * compile slot, in line; false if the request was cancelled first (it leaves the line).
   */
  private boolean awaitTurn(InFlight state) {
    try {
      if (state.after != null) {
        state.after.answered.await();
        state.after = null;
        synchronized (turns) {
          queue.add(state);
        }
      }
      synchronized (turns) {
        boolean granted = false;
        try {
          while (!state.cancelled && !(freeSlots > 0 && queue.peekFirst() == state)) {
            turns.wait();
          }
          if (!state.cancelled) {
            queue.removeFirst();
            freeSlots--;
            granted = true;
          }
        } finally {
          if (!granted) {
            queue.remove(state); // cancelled or interrupted: out of the line
          }
          turns.notifyAll(); // the next in line may have a slot now
        }
        return granted;
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      return false;
    }
  }

  private void compileAndRespond(WireFormat.Request request, InFlight state) {
    ByteArrayOutputStream diagnostics = new ByteArrayOutputStream();
    int code;
    try (PrintStream out = new PrintStream(diagnostics, true, StandardCharsets.UTF_8);
        RequestOutput.Sink sink = RequestOutput.into(diagnostics)) {
      String[] args = null;
      try {
        args = requestArguments(request.arguments, request.sandboxDir);
      } catch (Argfiles.ArgfileException e) {
        out.println("javac-worker: " + e.getMessage());
      }
      if (args != null && startupArgs.length > 0) {
        String[] own = args;
        args = java.util.Arrays.copyOf(startupArgs, startupArgs.length + own.length);
        System.arraycopy(own, 0, args, startupArgs.length, own.length);
      }
      java.util.function.Consumer<Runnable> onCancel = state == null ? null : state::stopWith;
      code = args == null ? ARGFILE_EXIT_CODE : compile(args, out, onCancel);
    } catch (OutOfMemoryError e) {
      LOG.println("javac-worker: out of memory; exiting so that a fresh worker starts");
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
        LOG.println("javac-worker: cannot write a response: " + e);
        System.exit(4);
      }
    }
  }

  /**
   * Where System.out and System.err write in persistent mode: into the output of the
   * request whose thread writes (or a thread it started: the sink is inherited), until it
   * is answered; otherwise to the worker's stderr.
   */
  static final class RequestOutput extends OutputStream {
    /** One request's output, open until the request is answered. */
    static final class Sink implements AutoCloseable {
      private volatile OutputStream target;

      Sink(OutputStream target) {
        this.target = target;
      }

      @Override
      public void close() {
        target = null; // a thread the request left running writes to stderr from now on
      }
    }

    private static final InheritableThreadLocal<Sink> CURRENT = new InheritableThreadLocal<>();
    private final OutputStream otherwise;

    private RequestOutput(OutputStream otherwise) {
      this.otherwise = otherwise;
    }

    static PrintStream stream(OutputStream otherwise) {
      return new PrintStream(new RequestOutput(otherwise), true, StandardCharsets.UTF_8) {
        @Override
        public void close() {
          flush(); // a processor closing System.out would silence every later request
        }
      };
    }

    /** Sends what this thread, and those it starts, write there until the sink closes. */
    static Sink into(OutputStream output) {
      Sink sink = new Sink(output);
      CURRENT.set(sink);
      return sink;
    }

    private OutputStream target() {
      Sink sink = CURRENT.get();
      OutputStream target = sink == null ? null : sink.target;
      return target == null ? otherwise : target;
    }

    @Override
    public void write(int b) throws java.io.IOException {
      target().write(b);
    }

    @Override
    public void write(byte[] bytes, int offset, int length) throws java.io.IOException {
      target().write(bytes, offset, length);
    }

    @Override
    public void flush() throws java.io.IOException {
      target().flush();
    }
  }

  /** What an option's value holds, for moving the paths in it into a sandbox. */
  private enum Value {
    /** No path: a release, an encoding, module or class names, a number. */
    TEXT,
    PATH,
    /** Paths separated by ':'. */
    PATHS,
    /** {@code module=path[:path]}. */
    MODULE_PATHS,
    /** Paths (or patterns) separated by ':', or {@code module=path[:path]}. */
    MODULE_SOURCE_PATH,
    /** A JDK's path, or {@code none}. */
    SYSTEM,
  }

  /**
   * javac's options that take a value (javac --help, --help-extra and the hidden ones of
   * JDK 17), under all their names: the value is the next argument, or for a name that
   * starts with "--", also what follows '=' ({@code --class-path=lib}). Every other option
   * takes none, or has its value joined to it (-g, -Werror, -Xlint:all, -Xdiags:verbose,
   * -XD..., -A...), so that the argument after it is a source file.
   */
  private static final Map<String, Value> OPTIONS_WITH_A_VALUE =
      Map.ofEntries(
          Map.entry("-d", Value.PATH),
          Map.entry("-s", Value.PATH),
          Map.entry("-h", Value.PATH),
          Map.entry("-Xstdout", Value.PATH),
          Map.entry("--system", Value.SYSTEM),
          Map.entry("--class-path", Value.PATHS),
          Map.entry("-classpath", Value.PATHS),
          Map.entry("-cp", Value.PATHS),
          Map.entry("--source-path", Value.PATHS),
          Map.entry("-sourcepath", Value.PATHS),
          Map.entry("--module-path", Value.PATHS),
          Map.entry("-p", Value.PATHS),
          Map.entry("--upgrade-module-path", Value.PATHS),
          Map.entry("--processor-path", Value.PATHS),
          Map.entry("-processorpath", Value.PATHS),
          Map.entry("--processor-module-path", Value.PATHS),
          Map.entry("--boot-class-path", Value.PATHS),
          Map.entry("-bootclasspath", Value.PATHS),
          Map.entry("-extdirs", Value.PATHS),
          Map.entry("-endorseddirs", Value.PATHS),
          Map.entry("--module-source-path", Value.MODULE_SOURCE_PATH),
          Map.entry("--patch-module", Value.MODULE_PATHS),
          Map.entry("-encoding", Value.TEXT),
          Map.entry("--release", Value.TEXT),
          Map.entry("--source", Value.TEXT),
          Map.entry("-source", Value.TEXT),
          Map.entry("--target", Value.TEXT),
          Map.entry("-target", Value.TEXT),
          Map.entry("-profile", Value.TEXT),
          Map.entry("-processor", Value.TEXT),
          Map.entry("--module", Value.TEXT),
          Map.entry("-m", Value.TEXT),
          Map.entry("--add-modules", Value.TEXT),
          Map.entry("--limit-modules", Value.TEXT),
          Map.entry("--module-version", Value.TEXT),
          Map.entry("--add-exports", Value.TEXT),
          Map.entry("--add-opens", Value.TEXT),
          Map.entry("--add-reads", Value.TEXT),
          Map.entry("--default-module-for-created-files", Value.TEXT),
          Map.entry("--multi-release", Value.TEXT),
          Map.entry("-Xmaxerrs", Value.TEXT),
          Map.entry("-Xmaxwarns", Value.TEXT),
          Map.entry("--debug", Value.TEXT),
          Map.entry("--should-stop", Value.TEXT),
          Map.entry("--diags", Value.TEXT));

  /** Options with a path list joined to their name. */
  private static final java.util.List<String> JOINED_PATHS_OPTIONS =
      java.util.List.of(
          "-Xbootclasspath:", "-Xbootclasspath/a:", "-Xbootclasspath/p:", "-Djava.ext.dirs=",
          "-Djava.endorsed.dirs=");

  /** The module-specific form of --module-source-path: a module name, then '='. */
  private static final java.util.regex.Pattern MODULE_SPECIFIC =
      java.util.regex.Pattern.compile("[\\p{Alnum}$_.]+=.*");

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
      if (!arg.startsWith("-")) {
        out.add(sandbox.resolve(arg).toString()); // an operand: a source file
        continue;
      }
      Value value = OPTIONS_WITH_A_VALUE.get(arg);
      if (value != null) {
        out.add(arg);
        if (i + 1 < args.length) {
          out.add(inSandbox(value, args[++i], sandbox));
        }
        continue;
      }
      int equals = arg.indexOf('=');
      value = equals > 0 && arg.startsWith("--") ? OPTIONS_WITH_A_VALUE.get(arg.substring(0, equals)) : null;
      if (value != null) {
        out.add(arg.substring(0, equals + 1) + inSandbox(value, arg.substring(equals + 1), sandbox));
        continue;
      }
      String joined = null;
      for (String prefix : JOINED_PATHS_OPTIONS) {
        if (arg.startsWith(prefix)) {
          joined = prefix + inSandbox(Value.PATHS, arg.substring(prefix.length()), sandbox);
        }
      }
      out.add(joined != null ? joined : arg); // an option without a value of its own
    }
    return out.toArray(new String[0]);
  }

  /** An option's value with its relative paths resolved in {@code sandbox}. */
  private static String inSandbox(Value kind, String value, java.nio.file.Path sandbox) {
    switch (kind) {
      case PATH:
        return value.isEmpty() ? value : sandbox.resolve(value).toString();
      case SYSTEM:
        return value.equals("none") ? value : inSandbox(Value.PATH, value, sandbox);
      case MODULE_SOURCE_PATH:
        Value form = MODULE_SPECIFIC.matcher(value).matches() ? Value.MODULE_PATHS : Value.PATHS;
        return inSandbox(form, value, sandbox);
      case MODULE_PATHS:
        int equals = value.indexOf('=');
        return value.substring(0, equals + 1)
            + inSandbox(Value.PATHS, value.substring(equals + 1), sandbox);
      case PATHS:
        StringBuilder paths = new StringBuilder();
        for (String path : value.split(":", -1)) {
          if (paths.length() > 0) {
            paths.append(':');
          }
          paths.append(inSandbox(Value.PATH, path, sandbox));
        }
        return paths.toString();
      default:
        return value;
    }
  }

  /**
   * Runs javac once; its diagnostics (javac's usual format) go to {@code diagnostics}. A
   * compile that names no class path gets an empty one ({@link EmptyClassPath}); one that
   * names its own overrides it, since javac takes the last.
   */
  static int compile(String[] args, PrintStream diagnostics) {
    return compile(args, diagnostics, null);
  }

  /**
   * {@link #compile(String[], PrintStream)}, which {@code onCancel} is given a way to cut
   * short (null: none; see {@link StoppableJavac} for what a cancel skips).
   */
  static int compile(
      String[] args, PrintStream diagnostics, java.util.function.Consumer<Runnable> onCancel) {
    for (int i = 0; i < args.length; i++) {
      if (args[i].startsWith("-J")) {
        // In-process javac has no launcher to hand it to: it failed with an internal
        // error and a stack trace.
        diagnostics.println(
            "error: " + args[i] + " is an option of the javac launcher, and this compile runs "
                + "in-process: give JVM flags to the worker instead (JAVAC_WORKER_JVM_FLAGS "
                + "for toolchains/java/javac-worker, JVM_FLAGS in toolchains/java/defs.bzl)");
        return 2; // javac's code for a bad command line
      }
      if (OPTIONS_WITH_A_VALUE.containsKey(args[i])) {
        i++; // its value, which may start with -J (`-d -Jout`), is no option
      }
    }
    String[] withDefault = new String[args.length + 2];
    withDefault[0] = "--class-path";
    withDefault[1] = EmptyClassPath.current();
    System.arraycopy(args, 0, withDefault, 2, args.length);
    int code =
        onCancel != null && StoppableJavac.LOADED != null
            ? StoppableJavac.LOADED.run(withDefault, diagnostics, onCancel)
            : JAVAC.run(null, diagnostics, diagnostics, withDefault);
    if (code == 0) {
      makeOutputDirectories(args); // a failed compile leaves nothing, as javac's does
    }
    return code;
  }

  /** The options naming a directory javac writes to. */
  private static final java.util.Set<String> OUTPUT_DIRECTORY_OPTIONS = java.util.Set.of("-d", "-s", "-h");

  /**
   * Makes the directories javac writes to, after a compile that succeeded. javac makes one
   * only to write a file in it, so a compile that writes none (a library of a {@code
   * package-info.java} without annotations) left no {@code -d} directory, and Buck2 failed
   * the action for its missing output. One that cannot be made is left alone.
   */
  private static void makeOutputDirectories(String[] args) {
    for (int i = 0; i + 1 < args.length; i++) {
      if (OUTPUT_DIRECTORY_OPTIONS.contains(args[i])) {
        try {
          java.nio.file.Files.createDirectories(java.nio.file.Path.of(args[i + 1]));
        } catch (java.io.IOException | java.nio.file.InvalidPathException e) {
          // javac says what is wrong with it
        }
      }
      if (OPTIONS_WITH_A_VALUE.containsKey(args[i])) {
        i++; // its value is no option
      }
    }
  }

  /**
   * javac as {@code JAVAC.run} runs it (its own entry point, {@code Main}, on a fresh
   * context), with a way to cut it short: one more error counted in its log. javac looks
   * at its error count before each class's flow analysis, desugaring and writing (with
   * an error, by default, it does none of them), and after annotation processing; it
   * then ends as a compile with errors does, its diagnostics dropped here. It does not
   * look before analysing (attributing) a class: for that, the compile's queue of classes
   * to analyse is javac's own with a stop ({@link AttributionStop}), which then reads as
   * empty, and the class being analysed is the last. Nothing is thrown into javac
   * (an exception out of it is a javac crash, whose arguments it writes to a file), and
   * nothing is added to it that changes an uncancelled compile (a task listener would:
   * javac then keeps comments and analyses implicitly compiled classes). Without this,
   * a cancelled compile ran to its end, and a client that waits a grace for the
   * answer (the runtime: 5 s) then killed the worker, every compile in it with it.
   * javac's internals are not exported: this needs the launchers' {@code --add-exports}
   * of three of its packages (a fourth for {@link AttributionStop}), and without them
   * (java started by hand) {@link #LOADED} is null and a cancelled compile runs to its end,
   * as before.
   */
  static final class StoppableJavac {
    /** The one instance, or null where javac's internals are not exported to the worker. */
    static final StoppableJavac LOADED = load();

    private final java.lang.reflect.Constructor<?> newMain;
    private final java.lang.reflect.Method compile;
    private final java.lang.reflect.Constructor<?> newContext;
    private final java.lang.reflect.Method preRegisterFileManager;
    private final java.lang.reflect.Method put;
    private final java.lang.reflect.Method contextGet;
    private final Object outKey;
    private final Object errKey;
    private final java.lang.reflect.Method logOf;
    private final java.lang.reflect.Field errors;
    private final java.lang.reflect.Field exitCode;

    private StoppableJavac() throws ReflectiveOperationException {
      Class<?> main = Class.forName("com.sun.tools.javac.main.Main");
      Class<?> context = Class.forName("com.sun.tools.javac.util.Context");
      Class<?> key = Class.forName("com.sun.tools.javac.util.Context$Key");
      Class<?> log = Class.forName("com.sun.tools.javac.util.Log");
      newMain = main.getConstructor(String.class);
      compile = main.getMethod("compile", String[].class, context);
      newContext = context.getConstructor();
      preRegisterFileManager =
          Class.forName("com.sun.tools.javac.file.JavacFileManager")
              .getMethod("preRegister", context);
      put = context.getMethod("put", key, Object.class);
      contextGet = context.getMethod("get", Class.class);
      outKey = log.getField("outKey").get(null);
      errKey = log.getField("errKey").get(null);
      logOf = log.getMethod("instance", context);
      errors = log.getField("nerrors");
      exitCode = Class.forName("com.sun.tools.javac.main.Main$Result").getField("exitCode");
    }

    private static StoppableJavac load() {
      if (JAVAC == null) {
        return null;
      }
      Module compiler = JAVAC.getClass().getModule();
      Module worker = JavacWorker.class.getModule();
      for (String name : new String[] {"main", "util", "file"}) {
        if (!compiler.isExported("com.sun.tools.javac." + name, worker)) {
          return null;
        }
      }
      try {
        return new StoppableJavac();
      } catch (ReflectiveOperationException | RuntimeException e) {
        LOG.println("javac-worker: a cancel cannot stop a compile in this JDK: " + e);
        return null;
      }
    }

    int run(String[] args, PrintStream diagnostics, java.util.function.Consumer<Runnable> onCancel) {
      try {
        Object context = newContext.newInstance();
        preRegisterFileManager.invoke(null, context);
        // What javac's Main(name, writer) does first thing in compile: the log's writers,
        // then the log, made here so that a cancel can reach it from the start.
        PrintWriter writer = new PrintWriter(diagnostics, true);
        put.invoke(context, outKey, writer);
        put.invoke(context, errKey, writer);
        Object log = logOf.invoke(null, context);
        // Before anything asks the context for its queue (javac's own then takes its place).
        Runnable stopAnalysis = AttributionStop.install(context);
        java.util.concurrent.atomic.AtomicBoolean stopped =
            new java.util.concurrent.atomic.AtomicBoolean();
        onCancel.accept(
            () -> {
              if (stopped.compareAndSet(false, true)) {
                // The error first: a compile that sees the queue stopped sees the error too
                // (the stop's volatile write publishes it), and ends as one with errors.
                countAnError(log);
                stopAnalysis.run();
              }
            });
        try {
          Object main = newMain.newInstance("javac"); // the writers are in the context
          return exitCode.getInt(compile.invoke(main, args, context));
        } finally {
          // As javac's own entry point does with the context it made.
          ((javax.tools.JavaFileManager) contextGet.invoke(context, javax.tools.JavaFileManager.class))
              .close();
        }
      } catch (java.lang.reflect.InvocationTargetException e) {
        Throwable cause = e.getCause();
        if (cause instanceof RuntimeException) {
          throw (RuntimeException) cause;
        }
        if (cause instanceof Error) {
          throw (Error) cause;
        }
        throw new IllegalStateException(cause);
      } catch (ReflectiveOperationException | java.io.IOException e) {
        throw new IllegalStateException(e);
      }
    }

    /**
     * One more error in javac's count, from the thread that reads the cancel. A count the
     * compile makes at the same moment may be lost, never both: either is an error.
     */
    private void countAnError(Object log) {
      try {
        errors.setInt(log, errors.getInt(log) + 1);
      } catch (ReflectiveOperationException e) {
        LOG.println("javac-worker: a cancel could not stop its compile: " + e);
      }
    }
  }

  /**
   * javac's queue of classes to analyse ({@code com.sun.tools.javac.comp.Todo}) with a stop:
   * once stopped, {@code isEmpty()} says it is, so javac analyses no class after the one it
   * is on (its loops ask that before taking each; under {@code -XDcompilePolicy=byfile}
   * its queue of files says so, and no file after the one it is on is analysed). Nothing
   * else changes: a take that raced the stop still gets its class (one more analysed; its
   * size and poll reading empty too would have made that take throw, a javac crash).
   * Unstopped it is javac's own, unchanged. It subclasses a class of javac's internals,
   * which the worker's sources cannot (built with {@code --release 17}, which forbids
   * {@code --add-exports}): it is compiled once, in memory, by this JVM's javac, on a
   * thread of its own from the worker's start; a compile that comes before that is done
   * waits for it (measured: the worker's first answer about 0.1 s later, on a start of
   * about 0.45 s; later ones unchanged). A
   * JDK whose queue differs, or a launcher that does not export {@code
   * com.sun.tools.javac.comp}: a cancel then stops at javac's next step alone, as before.
   */
  static final class AttributionStop {
    private static final String NAME = "buck2.workers.javac.StoppableTodo";
    private static final String SOURCE =
        String.join(
            "\n",
            "package buck2.workers.javac;",
            "import com.sun.tools.javac.comp.AttrContext;",
            "import com.sun.tools.javac.comp.Env;",
            "import java.util.Queue;",
            "public final class StoppableTodo extends com.sun.tools.javac.comp.Todo",
            "    implements Runnable {",
            "  private volatile boolean stopped;",
            "  public StoppableTodo(com.sun.tools.javac.util.Context context) { super(context); }",
            "  @Override public void run() { stopped = true; }",
            "  @Override public boolean isEmpty() { return stopped || super.isEmpty(); }",
            // -XDcompilePolicy=byfile takes the classes file by file from this queue.
            "  @Override public Queue<Queue<Env<AttrContext>>> groupByFile() {",
            "    Queue<Queue<Env<AttrContext>>> files = super.groupByFile();",
            "    return new java.util.AbstractQueue<Queue<Env<AttrContext>>>() {",
            "      @Override public boolean isEmpty() { return stopped || files.isEmpty(); }",
            "      @Override public int size() { return files.size(); }",
            "      @Override public java.util.Iterator<Queue<Env<AttrContext>>> iterator() {",
            "        return files.iterator();",
            "      }",
            "      @Override public boolean offer(Queue<Env<AttrContext>> file) {",
            "        return files.offer(file);",
            "      }",
            "      @Override public Queue<Env<AttrContext>> poll() { return files.poll(); }",
            "      @Override public Queue<Env<AttrContext>> peek() { return files.peek(); }",
            "    };",
            "  }",
            "}");

    /** Its constructor (taking javac's Context), once compiled; null if it cannot be. */
    private static volatile java.lang.reflect.Constructor<?> made;

    /** How long a compile waits for it, at most (it takes a few tenths of a second). */
    private static final long PREPARE_WAIT_S = 20;

    private static final java.util.concurrent.atomic.AtomicBoolean GAVE_UP =
        new java.util.concurrent.atomic.AtomicBoolean();

    /** Counted down once {@link #made} is what it will be. */
    private static final java.util.concurrent.CountDownLatch PREPARED =
        new java.util.concurrent.CountDownLatch(1);

    private static final Runnable NONE = () -> {};

    private static final java.util.concurrent.atomic.AtomicBoolean STARTED =
        new java.util.concurrent.atomic.AtomicBoolean();

    /** Starts making it, once (later calls do nothing). */
    static void prepareInBackground() {
      if (!STARTED.compareAndSet(false, true)) {
        return;
      }
      if (StoppableJavac.LOADED == null
          || !JAVAC.getClass().getModule().isExported(
              "com.sun.tools.javac.comp", JavacWorker.class.getModule())) {
        PREPARED.countDown();
        return;
      }
      Thread thread =
          new Thread(
              () -> {
                try {
                  prepare();
                } finally {
                  PREPARED.countDown();
                }
              },
              "javac-attribution-stop");
      thread.setDaemon(true);
      thread.start();
    }

    private static void prepare() {
      try {
        java.util.Map<String, java.io.ByteArrayOutputStream> classes =
            new java.util.concurrent.ConcurrentHashMap<>();
        javax.tools.StandardJavaFileManager files = JAVAC.getStandardFileManager(null, null, null);
        javax.tools.JavaFileManager inMemory =
            new javax.tools.ForwardingJavaFileManager<javax.tools.JavaFileManager>(files) {
              @Override
              public javax.tools.JavaFileObject getJavaFileForOutput(
                  Location location, String name, javax.tools.JavaFileObject.Kind kind,
                  javax.tools.FileObject sibling) {
                return new javax.tools.SimpleJavaFileObject(
                    java.net.URI.create("memory:///" + name.replace('.', '/') + kind.extension),
                    kind) {
                  @Override
                  public OutputStream openOutputStream() {
                    java.io.ByteArrayOutputStream bytes = new java.io.ByteArrayOutputStream();
                    classes.put(name, bytes);
                    return bytes;
                  }
                };
              }
            };
        javax.tools.JavaFileObject source =
            new javax.tools.SimpleJavaFileObject(
                java.net.URI.create("string:///" + NAME.replace('.', '/') + ".java"),
                javax.tools.JavaFileObject.Kind.SOURCE) {
              @Override
              public CharSequence getCharContent(boolean ignoreEncodingErrors) {
                return SOURCE;
              }
            };
        java.io.StringWriter said = new java.io.StringWriter();
        java.util.List<String> options =
            java.util.List.of(
                "-proc:none", "-implicit:none", "-nowarn",
                "--add-exports", "jdk.compiler/com.sun.tools.javac.comp=ALL-UNNAMED",
                "--add-exports", "jdk.compiler/com.sun.tools.javac.util=ALL-UNNAMED");
        boolean compiled;
        try (inMemory) {
          compiled = JAVAC.getTask(said, inMemory, null, options, null, java.util.List.of(source)).call();
        }
        java.io.ByteArrayOutputStream bytes = classes.get(NAME);
        if (!compiled || bytes == null) {
          LOG.println("javac-worker: a cancel cannot stop javac's analysis in this JDK: " + said);
          return;
        }
        // Every class it compiled to (the queue and its queue of files, a class of its
        // own), each defined from these bytes when first asked for.
        java.util.Map<String, byte[]> code = new java.util.HashMap<>();
        classes.forEach((name, output) -> code.put(name, output.toByteArray()));
        ClassLoader loader =
            new ClassLoader(JavacWorker.class.getClassLoader()) {
              @Override
              protected Class<?> findClass(String name) throws ClassNotFoundException {
                byte[] found = code.get(name);
                if (found == null) {
                  throw new ClassNotFoundException(name);
                }
                return defineClass(name, found, 0, found.length);
              }
            };
        for (String name : code.keySet()) {
          Class.forName(name, true, loader); // all of them now, not in a compile
        }
        Class<?> todo = Class.forName(NAME, true, loader);
        made = todo.getConstructor(Class.forName("com.sun.tools.javac.util.Context"));
      } catch (Exception | LinkageError e) {
        LOG.println("javac-worker: a cancel cannot stop javac's analysis in this JDK: " + e);
      }
    }

    /**
     * Puts a stoppable queue in {@code context} (javac's fresh one, before it is used) and
     * returns what stops it; a no-op where there is none.
     */
    static Runnable install(Object context) {
      prepareInBackground(); // (started at the worker's start)
      try {
        // After one compile gave up waiting, the others do not wait again.
        long wait = GAVE_UP.get() ? 0 : PREPARE_WAIT_S;
        if (!PREPARED.await(wait, java.util.concurrent.TimeUnit.SECONDS)) {
          if (!GAVE_UP.getAndSet(true)) {
            LOG.println(
                "javac-worker: the stop of javac's analysis was not ready after "
                    + PREPARE_WAIT_S + " s: compiles go on without it until it is");
          }
          return NONE;
        }
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        return NONE;
      }
      java.lang.reflect.Constructor<?> constructor = made;
      if (constructor == null) {
        return NONE;
      }
      try {
        return (Runnable) constructor.newInstance(context);
      } catch (ReflectiveOperationException | RuntimeException e) {
        LOG.println("javac-worker: a cancel cannot stop javac's analysis: " + e);
        return NONE;
      }
    }
  }

  /**
   * The class path of a compile that names none: a directory this JVM made and keeps empty.
   * javac run in-process defaults to the JVM's own class path, the worker's classes, so a
   * library with no deps compiled against them (and found sources there, the source path
   * defaulting to the class path). An empty {@code -cp ""} is no answer: javac reads an empty
   * class path as the current directory. Made on the first compile, removed at exit.
   */
  private static final class EmptyClassPath {
    private static String directory;
    private static java.nio.file.attribute.UserPrincipal owner;

    /**
     * The directory, made again if it is no longer the empty one this JVM made: a cleaner
     * of the temporary directory may remove it from a long-lived worker (javac then warned
     * of a bad path element, an error under -Werror), and another user of a shared /tmp
     * may then make one at its name, with an annotation processor in it that javac would
     * run. So it must be a directory, not a symlink, this JVM's user's, and empty.
     */
    static synchronized String current() {
      if (directory == null || !stillOurs(java.nio.file.Path.of(directory))) {
        make();
      }
      return directory;
    }

    private static boolean stillOurs(java.nio.file.Path path) {
      try {
        java.nio.file.attribute.PosixFileAttributes found =
            java.nio.file.Files.readAttributes(
                path,
                java.nio.file.attribute.PosixFileAttributes.class,
                java.nio.file.LinkOption.NOFOLLOW_LINKS);
        if (!found.isDirectory() || !found.owner().equals(owner)) {
          return false;
        }
        try (java.util.stream.Stream<java.nio.file.Path> entries = java.nio.file.Files.list(path)) {
          return entries.findAny().isEmpty();
        }
      } catch (java.io.IOException | UnsupportedOperationException e) {
        return false;
      }
    }

    private static void make() {
      try {
        java.nio.file.Path made = java.nio.file.Files.createTempDirectory("javac-worker-empty-");
        made.toFile().deleteOnExit();
        owner = java.nio.file.Files.getOwner(made, java.nio.file.LinkOption.NOFOLLOW_LINKS);
        directory = made.toString();
      } catch (java.io.IOException e) {
        throw new java.io.UncheckedIOException(
            "cannot make the empty class path under java.io.tmpdir ("
                + System.getProperty("java.io.tmpdir")
                + "); give the JVM -Djava.io.tmpdir=<a writable directory>",
            e);
      }
    }
  }
}
