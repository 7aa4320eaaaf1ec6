package com.example.bookshop.util;

public final class Money implements Comparable<Money> {
  private final long cents;
  private Money(long cents) { this.cents = cents; }
  public static Money ofCents(long cents) { return new Money(cents); }
  public static Money zero() { return new Money(0); }
  public Money plus(Money other) { return new Money(cents + other.cents); }
  public Money minus(Money other) { return new Money(cents - other.cents); }
  public Money times(int n) { return new Money(cents * n); }
  public Money percent(Percent p) { return new Money(Math.round(cents * p.value() / 100.0)); }
  public long cents() { return cents; }
  @Override public int compareTo(Money o) { return Long.compare(cents, o.cents); }
  @Override public boolean equals(Object o) { return o instanceof Money && ((Money) o).cents == cents; }
  @Override public int hashCode() { return Long.hashCode(cents); }
  @Override public String toString() { return String.format("%d.%02d", cents / 100, Math.abs(cents % 100)); }
}
