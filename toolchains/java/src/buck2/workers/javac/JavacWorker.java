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
 * once from its arguments (javac reads @argfiles itself) and exits with javac's code: the
 * one-shot fallback.
 */
public final class JavacWorker {
  private static final JavaCompiler JAVAC = ToolProvider.getSystemJavaCompiler();

  private final OutputStream protocolOut;
  private final WireFormat.Writer writer;
  /** Requests in flight, by id; a cancel answers and removes its request. */
  private final Map<Integer, Boolean> answered = new ConcurrentHashMap<>();

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
      System.exit(compile(args, System.err));
    }
    // Nothing but responses may reach the real stdout: everything else goes to stderr.
    OutputStream stdout = new FileOutputStream(FileDescriptor.out);
    System.setOut(new PrintStream(new FileOutputStream(FileDescriptor.err), true, "UTF-8"));
    int[] first = new int[1];
    InputStream in = WireFormat.peek(new BufferedInputStream(System.in), first);
    boolean json = first[0] == '{';
    WireFormat.Reader reader = json ? new WireFormat.JsonReader(in) : new WireFormat.ProtoReader(in);
    JavacWorker worker =
        new JavacWorker(stdout, json ? new WireFormat.JsonWriter() : new WireFormat.ProtoWriter());
    worker.serve(reader);
  }

  private void serve(WireFormat.Reader reader) throws Exception {
    while (true) {
      WireFormat.Request request = reader.read();
      if (request == null) {
        return;
      }
      if (request.verbosity > 0) {
        System.err.println("javac-worker: request " + request.requestId + ": " + request.arguments);
      }
      if (request.cancel) {
        // javac cannot be interrupted safely: answer the cancel, drop the result later.
        if (answered.put(request.requestId, Boolean.TRUE) == null) {
          respond(0, "", request.requestId, true);
        }
        continue;
      }
      if (request.requestId == 0) {
        handle(request); // singleplex: one at a time, in order
      } else {
        answered.remove(request.requestId);
        Thread thread = new Thread(() -> handle(request), "javac-request-" + request.requestId);
        thread.setDaemon(true);
        thread.start();
      }
    }
  }

  private void handle(WireFormat.Request request) {
    ByteArrayOutputStream diagnostics = new ByteArrayOutputStream();
    int code;
    try (PrintStream out = new PrintStream(diagnostics, true, StandardCharsets.UTF_8)) {
      code = compile(request.arguments.toArray(new String[0]), out);
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
    if (request.requestId != 0 && answered.putIfAbsent(request.requestId, Boolean.TRUE) != null) {
      return; // cancelled meanwhile: the cancel was answered
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

  /** Runs javac once; its diagnostics (javac's usual format) go to {@code diagnostics}. */
  static int compile(String[] args, PrintStream diagnostics) {
    return JAVAC.run(null, diagnostics, diagnostics, args);
  }
}
