package buck2.workers.javac;

import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.PushbackReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A small streaming JSON reader: one value per call to {@link #next}, values back to back with
 * or without white space between them (as Bazel writes them).
 */
final class Json {
  private final PushbackReader in;

  Json(InputStream stream) {
    this.in = new PushbackReader(new InputStreamReader(stream, StandardCharsets.UTF_8), 1);
  }

  /** The next JSON value, or null at the end of the stream. */
  Object next() throws IOException {
    int c = skipSpace();
    if (c < 0) {
      return null;
    }
    return value(c);
  }

  private int skipSpace() throws IOException {
    int c;
    do {
      c = in.read();
    } while (c == ' ' || c == '\n' || c == '\r' || c == '\t');
    return c;
  }

  private Object value(int c) throws IOException {
    switch (c) {
      case '{':
        return object();
      case '[':
        return array();
      case '"':
        return string();
      case 't':
        expect("rue");
        return Boolean.TRUE;
      case 'f':
        expect("alse");
        return Boolean.FALSE;
      case 'n':
        expect("ull");
        return null;
      default:
        if (c == '-' || (c >= '0' && c <= '9')) {
          return number(c);
        }
        throw new IOException("unexpected character in JSON: " + (char) c);
    }
  }

  private void expect(String rest) throws IOException {
    for (char expected : rest.toCharArray()) {
      if (in.read() != expected) {
        throw new IOException("bad JSON literal");
      }
    }
  }

  private Map<String, Object> object() throws IOException {
    Map<String, Object> map = new LinkedHashMap<>();
    int c = skipSpace();
    if (c == '}') {
      return map;
    }
    while (true) {
      if (c != '"') {
        throw new IOException("expected a JSON object key");
      }
      String key = string();
      if (skipSpace() != ':') {
        throw new IOException("expected ':' in a JSON object");
      }
      map.put(key, value(skipSpace()));
      c = skipSpace();
      if (c == '}') {
        return map;
      }
      if (c != ',') {
        throw new IOException("expected ',' or '}' in a JSON object");
      }
      c = skipSpace();
    }
  }

  private List<Object> array() throws IOException {
    List<Object> list = new ArrayList<>();
    int c = skipSpace();
    if (c == ']') {
      return list;
    }
    while (true) {
      list.add(value(c));
      c = skipSpace();
      if (c == ']') {
        return list;
      }
      if (c != ',') {
        throw new IOException("expected ',' or ']' in a JSON array");
      }
      c = skipSpace();
    }
  }

  private String string() throws IOException {
    StringBuilder out = new StringBuilder();
    while (true) {
      int c = in.read();
      if (c < 0) {
        throw new IOException("unterminated JSON string");
      }
      if (c == '"') {
        return out.toString();
      }
      if (c != '\\') {
        out.append((char) c);
        continue;
      }
      int e = in.read();
      switch (e) {
        case 'n': out.append('\n'); break;
        case 't': out.append('\t'); break;
        case 'r': out.append('\r'); break;
        case 'b': out.append('\b'); break;
        case 'f': out.append('\f'); break;
        case 'u':
          char[] hex = new char[4];
          for (int i = 0; i < 4; i++) {
            hex[i] = (char) in.read();
          }
          out.append((char) Integer.parseInt(new String(hex), 16));
          break;
        default: out.append((char) e);
      }
    }
  }

  private Number number(int first) throws IOException {
    StringBuilder text = new StringBuilder().append((char) first);
    while (true) {
      int c = in.read();
      if ((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
        text.append((char) c);
      } else {
        if (c >= 0) {
          in.unread(c);
        }
        break;
      }
    }
    String s = text.toString();
    if (s.contains(".") || s.contains("e") || s.contains("E")) {
      return Double.parseDouble(s);
    }
    return Long.parseLong(s);
  }

  /** A JSON string literal for {@code text}. */
  static String quote(String text) {
    StringBuilder out = new StringBuilder("\"");
    for (int i = 0; i < text.length(); i++) {
      char c = text.charAt(i);
      switch (c) {
        case '"': out.append("\\\""); break;
        case '\\': out.append("\\\\"); break;
        case '\n': out.append("\\n"); break;
        case '\r': out.append("\\r"); break;
        case '\t': out.append("\\t"); break;
        default:
          if (c < 0x20) {
            out.append(String.format("\\u%04x", (int) c));
          } else {
            out.append(c);
          }
      }
    }
    return out.append('"').toString();
  }
}
