package com.example.bookshop.util;

public final class Checks {
  private Checks() {}
  public static <T> T notNull(T value, String what) { if (value == null) { throw new IllegalArgumentException(what + " is null"); } return value; }
  public static int positive(int value, String what) { if (value <= 0) { throw new IllegalArgumentException(what + " must be positive"); } return value; }
}
