package buck2.workers.javac;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * Reading WorkRequests and writing WorkResponses in Bazel's two wire formats: varint
 * length-prefixed protobuf, and JSON objects back to back. Parsing only; no compiling.
 */
final class WireFormat {
  private WireFormat() {}

  /** A WorkRequest: the fields this worker uses. */
  static final class Request {
    final List<String> arguments = new ArrayList<>();
    int requestId;
    boolean cancel;
    int verbosity;
    String sandboxDir = "";
  }

  /** Reads one request, or returns null at the end of the stream. */
  interface Reader {
    Request read() throws IOException;
  }

  /** Encodes one response. */
  interface Writer {
    byte[] encode(int exitCode, String output, int requestId, boolean wasCancelled);
  }

  private static final String[] JSON_KEYS = {
    "arguments", "inputs", "requestId", "cancel", "verbosity", "sandboxDir"
  };

  /**
   * Tells the formats apart from the first bytes. A JSON request starts with '{', optional
   * white space, then '}' or the quoted name of a WorkRequest field. A proto request of 123
   * bytes also starts with '{' (its length) and then a field tag, which can be '\n' (field 1)
   * followed by any argument length, even that of '"': so the field name is checked too.
   */
  static InputStream peek(InputStream in, boolean[] json) throws IOException {
    java.io.PushbackInputStream pushback = new java.io.PushbackInputStream(in, 64);
    byte[] head = new byte[64];
    int n = 0;
    int first = pushback.read();
    if (first < 0) {
      return pushback;
    }
    head[n++] = (byte) first;
    Boolean decided = first == '{' ? null : Boolean.FALSE;
    // Read, one byte at a time, just enough to decide: both kinds of request are longer
    // than what is read here, so this never waits for bytes that will not come.
    while (decided == null && n < head.length) {
      int b = pushback.read();
      if (b < 0) {
        break;
      }
      head[n++] = (byte) b;
      decided = decide(new String(head, 1, n - 1, StandardCharsets.ISO_8859_1));
    }
    json[0] = Boolean.TRUE.equals(decided);
    pushback.unread(head, 0, n);
    return pushback;
  }

  /** JSON, proto, or null while the bytes after '{' could still be either. */
  private static Boolean decide(String rest) {
    String text = rest.stripLeading();
    if (text.isEmpty()) {
      return null;
    }
    if (text.startsWith("}")) {
      return Boolean.TRUE;
    }
    if (!text.startsWith("\"")) {
      return Boolean.FALSE;
    }
    boolean prefix = false;
    for (String key : JSON_KEYS) {
      String quoted = "\"" + key + "\"";
      if (text.startsWith(quoted)) {
        return Boolean.TRUE;
      }
      prefix |= quoted.startsWith(text);
    }
    return prefix ? null : Boolean.FALSE;
  }

  // ---- protobuf ----------------------------------------------------------------------

  static final class ProtoReader implements Reader {
    private final InputStream in;

    ProtoReader(InputStream in) {
      this.in = in;
    }

    @Override
    public Request read() throws IOException {
      long length = readVarint(in, true);
      if (length < 0) {
        return null;
      }
      byte[] body = in.readNBytes((int) length);
      if (body.length != length) {
        throw new IOException("truncated WorkRequest");
      }
      return parse(body);
    }

    private static Request parse(byte[] body) throws IOException {
      Request request = new Request();
      java.io.ByteArrayInputStream in = new java.io.ByteArrayInputStream(body);
      while (in.available() > 0) {
        long tag = readVarint(in, false);
        int field = (int) (tag >>> 3);
        int wireType = (int) (tag & 7);
        if (wireType == 0) {
          long value = readVarint(in, false);
          if (field == 3) {
            request.requestId = (int) value;
          } else if (field == 4) {
            request.cancel = value != 0;
          } else if (field == 5) {
            request.verbosity = (int) value;
          }
        } else if (wireType == 2) {
          byte[] bytes = in.readNBytes((int) readVarint(in, false));
          if (field == 1) {
            request.arguments.add(new String(bytes, StandardCharsets.UTF_8));
          } else if (field == 6) {
            request.sandboxDir = new String(bytes, StandardCharsets.UTF_8);
          } // field 2 (inputs) is not needed: every compile is fresh
        } else if (wireType == 5) {
          in.readNBytes(4);
        } else if (wireType == 1) {
          in.readNBytes(8);
        } else {
          throw new IOException("unsupported wire type " + wireType);
        }
      }
      return request;
    }
  }

  static long readVarint(InputStream in, boolean eofAllowed) throws IOException {
    long value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      int b = in.read();
      if (b < 0) {
        if (eofAllowed && shift == 0) {
          return -1;
        }
        throw new IOException("truncated varint");
      }
      value |= (long) (b & 0x7f) << shift;
      if ((b & 0x80) == 0) {
        return value;
      }
    }
    throw new IOException("varint too long");
  }

  static void writeVarint(OutputStream out, long value) throws IOException {
    while ((value & ~0x7fL) != 0) {
      out.write((int) ((value & 0x7f) | 0x80));
      value >>>= 7;
    }
    out.write((int) value);
  }

  static final class ProtoWriter implements Writer {
    @Override
    public byte[] encode(int exitCode, String output, int requestId, boolean wasCancelled) {
      try {
        ByteArrayOutputStream body = new ByteArrayOutputStream();
        if (exitCode != 0) {
          body.write(1 << 3);
          writeVarint(body, exitCode & 0xffffffffL);
        }
        if (!output.isEmpty()) {
          byte[] text = output.getBytes(StandardCharsets.UTF_8);
          body.write((2 << 3) | 2);
          writeVarint(body, text.length);
          body.write(text);
        }
        if (requestId != 0) {
          body.write(3 << 3);
          writeVarint(body, requestId & 0xffffffffL);
        }
        if (wasCancelled) {
          body.write(4 << 3);
          body.write(1);
        }
        ByteArrayOutputStream framed = new ByteArrayOutputStream();
        writeVarint(framed, body.size());
        body.writeTo(framed);
        return framed.toByteArray();
      } catch (IOException e) {
        throw new IllegalStateException(e);
      }
    }
  }

  // ---- JSON -----------------------------------------------------------------------------

  static final class JsonReader implements Reader {
    private final Json parser;

    JsonReader(InputStream in) {
      this.parser = new Json(in);
    }

    @Override
    public Request read() throws IOException {
      Object value = parser.next();
      if (value == null) {
        return null;
      }
      if (!(value instanceof Map)) {
        throw new IOException("a JSON WorkRequest must be an object");
      }
      Map<?, ?> object = (Map<?, ?>) value;
      Request request = new Request();
      Object arguments = object.get("arguments");
      if (arguments instanceof List) {
        for (Object argument : (List<?>) arguments) {
          request.arguments.add(String.valueOf(argument));
        }
      }
      request.requestId = number(object.get("requestId"));
      request.verbosity = number(object.get("verbosity"));
      request.cancel = Boolean.TRUE.equals(object.get("cancel"));
      Object sandbox = object.get("sandboxDir");
      request.sandboxDir = sandbox == null ? "" : String.valueOf(sandbox);
      return request;
    }

    private static int number(Object value) {
      return value instanceof Number ? ((Number) value).intValue() : 0;
    }
  }

  static final class JsonWriter implements Writer {
    @Override
    public byte[] encode(int exitCode, String output, int requestId, boolean wasCancelled) {
      StringBuilder json = new StringBuilder("{");
      json.append("\"exitCode\":").append(exitCode);
      json.append(",\"output\":").append(Json.quote(output));
      if (requestId != 0) {
        json.append(",\"requestId\":").append(requestId);
      }
      if (wasCancelled) {
        json.append(",\"wasCancelled\":true");
      }
      return json.append("}\n").toString().getBytes(StandardCharsets.UTF_8);
    }
  }
}
