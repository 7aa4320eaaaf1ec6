package com.example.bookshop.orders;

import com.example.bookshop.pricing.Pricer;
import com.example.bookshop.util.Result;

public final class Checkout {
  private final Pricer pricer;
  public Checkout(Pricer pricer) { this.pricer = pricer; }
  public Result<Invoice> pay(Cart cart, Payment payment) { Invoice invoice = new Invoice(cart.order(), pricer.quote(cart.order())); if (payment.amount().compareTo(invoice.quote().total()) < 0) { return Result.failure("payment of " + payment.amount() + " does not cover " + invoice.quote().total()); } return Result.ok(invoice); }
}
