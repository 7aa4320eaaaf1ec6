package com.example.bookshop.orders;

import com.example.bookshop.catalog.Catalog;
import com.example.bookshop.util.Result;

import java.util.ArrayList;
import java.util.List;

public final class OrderService {
  private final Catalog catalog;
  private final Checkout checkout;
  private final List<Invoice> invoices = new ArrayList<>();
  public OrderService(Catalog catalog, Checkout checkout) { this.catalog = catalog; this.checkout = checkout; }
  public Result<Invoice> place(Cart cart, Payment payment) { Result<Invoice> result = checkout.pay(cart, payment); if (result.isOk()) { for (var line : cart.order().lines()) { catalog.find(line.book().isbn()).take(line.quantity()); } invoices.add(result.value()); } return result; }
  public List<Invoice> invoices() { return invoices; }
}
