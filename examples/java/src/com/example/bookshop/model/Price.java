package com.example.bookshop.model;

import com.example.bookshop.util.Checks;
import com.example.bookshop.util.Money;

public final class Price {
  private final Money amount;
  public Price(Money amount) { this.amount = Checks.notNull(amount, "amount"); }
  public Money amount() { return amount; }
  @Override public String toString() { return amount.toString(); }
}
