package com.example.bookshop.pricing;

import com.example.bookshop.model.Order;
import com.example.bookshop.util.Money;
import com.example.bookshop.util.Percent;

public final class Discount implements PriceRule {
  private final Percent percent;
  public Discount(Percent percent) { this.percent = percent; }
  @Override public Money apply(Order order, Money current) { return current.minus(current.percent(percent)); }
  @Override public String name() { return "discount " + percent; }
}
