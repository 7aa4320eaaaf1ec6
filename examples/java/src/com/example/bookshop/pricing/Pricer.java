package com.example.bookshop.pricing;

import com.example.bookshop.model.Order;
import com.example.bookshop.model.OrderLine;
import com.example.bookshop.util.Money;

import java.util.ArrayList;
import java.util.List;

public final class Pricer {
  private final List<PriceRule> rules = new ArrayList<>();
  private final TaxTable taxes;
  public Pricer(TaxTable taxes) { this.taxes = taxes; }
  public Pricer with(PriceRule rule) { rules.add(rule); return this; }
  public Quote quote(Order order) { Money net = order.subtotal(); for (PriceRule rule : rules) { net = rule.apply(order, net); } Money tax = Money.zero(); for (OrderLine line : order.lines()) { tax = tax.plus(taxes.taxOn(line)); } return new Quote(net, tax); }
}
