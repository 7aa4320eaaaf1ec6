package com.example.bookshop.pricing;

import com.example.bookshop.util.Money;

public final class Quote {
  private final Money net;
  private final Money tax;
  public Quote(Money net, Money tax) { this.net = net; this.tax = tax; }
  public Money net() { return net; }
  public Money tax() { return tax; }
  public Money total() { return net.plus(tax); }
}
