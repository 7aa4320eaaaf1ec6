package com.example.bookshop.pricing;

import com.example.bookshop.model.Order;
import com.example.bookshop.model.OrderLine;
import com.example.bookshop.util.Money;
import com.example.bookshop.util.Percent;

public final class BulkDiscount implements PriceRule {
  private final int minimumItems;
  private final Percent percent;
  public BulkDiscount(int minimumItems, Percent percent) { this.minimumItems = minimumItems; this.percent = percent; }
  @Override public Money apply(Order order, Money current) { int items = order.lines().stream().mapToInt(OrderLine::quantity).sum(); return items >= minimumItems ? current.minus(current.percent(percent)) : current; }
  @Override public String name() { return "bulk " + minimumItems + "+ " + percent; }
}
