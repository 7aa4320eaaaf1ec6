package com.example.bookshop.util;

public final class Ids {
  private static int next = 1;
  private Ids() {}
  public static synchronized String next(String prefix) { return prefix + "-" + (next++); }
  public static synchronized void reset() { next = 1; }
}
