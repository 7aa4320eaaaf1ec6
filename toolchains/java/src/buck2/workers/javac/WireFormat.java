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

  /** At most this many bytes are read to tell the formats apart: see {@link #peek}. */
  private static final int HEAD = 123;

  /**
   * Tells the formats apart from the first bytes. A JSON request is an object: optional white
   * space, '{', optional white space, then '}' or a quoted name and ':' (any name: an unknown
   * field, or proto3 JSON's snake_case ones). A proto request starts with its length, which
   * can look like that start: 123 is '{', and 9, 10, 13 and 32 are white space. Its next byte
   * is a field tag, which can be '\n' (field 1), followed by any argument length, even that
   * of '"': so the name is read to its end, and a control character in it (never in a JSON
   * string, but in most proto tags and lengths) makes it proto. At most 123 bytes are read,
   * so that a proto request of 123 bytes is never read past its end: this never waits for
   * bytes that will not come.
   */
  static InputStream peek(InputStream in, boolean[] json) throws IOException {
    java.io.PushbackInputStream pushback = new java.io.PushbackInputStream(in, HEAD);
    byte[] head = new byte[HEAD];
    int n = 0;
    Boolean decided = null;
    // One byte at a time, just enough to decide.
    while (decided == null && n < head.length) {
      int b = pushback.read();
      if (b < 0) {
        break;
      }
      head[n++] = (byte) b;
      decided = decide(head, n);
    }
    json[0] = Boolean.TRUE.equals(decided);
    pushback.unread(head, 0, n);
    return pushback;
  }

  /** JSON, proto, or null while the first {@code n} bytes could still be either. */
  private static Boolean decide(byte[] head, int n) {
    int i = skipSpace(head, 0, n);
    if (i < n && head[i] != '{') {
      return Boolean.FALSE;
    }
    i = skipSpace(head, i + 1, n);
    if (i >= n) {
      return null;
    }
    if (head[i] == '}') {
      return Boolean.TRUE;
    }
    if (head[i] != '"') {
      return Boolean.FALSE;
    }
    for (i++; i < n && head[i] != '"'; i++) {
      if ((head[i] & 0xff) < 0x20) {
        return Boolean.FALSE;
      }
      if (head[i] == '\\') {
        i++; // an escape: the next character is part of the name
      }
    }
    i = skipSpace(head, i + 1, n);
    return i >= n ? null : Boolean.valueOf(head[i] == ':');
  }

  private static int skipSpace(byte[] head, int i, int n) {
    while (i < n && (head[i] == ' ' || head[i] == '\n' || head[i] == '\r' || head[i] == '\t')) {
      i++;
    }
    return i;
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
          long length = readVarint(in, false);
          if (length < 0 || length > in.available()) { // it was cut short silently
            throw new IOException(
                "field " + field + " claims " + Long.toUnsignedString(length)
                    + " bytes, past the end of its message");
          }
          byte[] bytes = in.readNBytes((int) length);
          if (field == 1) {
            request.arguments.add(new String(bytes, StandardCharsets.UTF_8));
          } else if (field == 6) {
            request.sandboxDir = new String(bytes, StandardCharsets.UTF_8);
          } // field 2 (inputs) is not needed: every compile is fresh
        } else if (wireType == 5 || wireType == 1) {
          int size = wireType == 5 ? 4 : 8;
          if (in.readNBytes(size).length != size) {
            throw new IOException("field " + field + " is cut short by the end of its message");
          }
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
      request.requestId = number(field(object, "requestId", "request_id"));
      request.verbosity = number(object.get("verbosity"));
      request.cancel = Boolean.TRUE.equals(object.get("cancel"));
      Object sandbox = field(object, "sandboxDir", "sandbox_dir");
      request.sandboxDir = sandbox == null ? "" : String.valueOf(sandbox);
      return request; // other fields (inputs, unknown ones) are not needed
    }

    /** A field by its JSON name or its proto name: proto3 JSON readers accept both. */
    private static Object field(Map<?, ?> object, String jsonName, String protoName) {
      Object value = object.get(jsonName);
      return value != null ? value : object.get(protoName);
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
