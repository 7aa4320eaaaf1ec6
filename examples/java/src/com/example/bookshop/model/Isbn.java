package com.example.bookshop.model;

import com.example.bookshop.util.Checks;

public final class Isbn {
  private final String digits;
  public Isbn(String digits) { this.digits = Checks.notNull(digits, "isbn").replace("-", ""); if (this.digits.length() != 13) { throw new IllegalArgumentException("ISBN-13 expected: " + digits); } }
  public String digits() { return digits; }
  @Override public boolean equals(Object o) { return o instanceof Isbn && ((Isbn) o).digits.equals(digits); }
  @Override public int hashCode() { return digits.hashCode(); }
  @Override public String toString() { return digits; }
}
