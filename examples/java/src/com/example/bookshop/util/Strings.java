package com.example.bookshop.util;

public final class Strings {
  private Strings() {}
  public static String pad(String s, int width) { StringBuilder b = new StringBuilder(s); while (b.length() < width) { b.append(' '); } return b.toString(); }
  public static boolean isBlank(String s) { return s == null || s.trim().isEmpty(); }
}
