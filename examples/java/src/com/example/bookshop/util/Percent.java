package com.example.bookshop.util;

public final class Percent {
  private final double value;
  public Percent(double value) { if (value < 0 || value > 100) { throw new IllegalArgumentException("percent out of range: " + value); } this.value = value; }
  public double value() { return value; }
  @Override public String toString() { return value + "%"; }
}
