package com.example.bookshop.orders;

import com.example.bookshop.util.Money;

public final class Payment {
  private final Money amount;
  private final String method;
  public Payment(Money amount, String method) { this.amount = amount; this.method = method; }
  public Money amount() { return amount; }
  public String method() { return method; }
}
