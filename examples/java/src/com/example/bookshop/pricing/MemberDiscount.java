package com.example.bookshop.pricing;

import com.example.bookshop.model.Order;
import com.example.bookshop.util.Money;
import com.example.bookshop.util.Percent;

public final class MemberDiscount implements PriceRule {
  private final Percent percent;
  public MemberDiscount(Percent percent) { this.percent = percent; }
  @Override public Money apply(Order order, Money current) { return order.customer().isMember() ? current.minus(current.percent(percent)) : current; }
  @Override public String name() { return "member " + percent; }
}
