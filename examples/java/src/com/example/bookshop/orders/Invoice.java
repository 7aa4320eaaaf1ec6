package com.example.bookshop.orders;

import com.example.bookshop.model.Order;
import com.example.bookshop.model.OrderLine;
import com.example.bookshop.pricing.Quote;

import java.util.ArrayList;
import java.util.List;

public final class Invoice {
  private final String orderId;
  private final List<InvoiceLine> lines = new ArrayList<>();
  private final Quote quote;
  public Invoice(Order order, Quote quote) { this.orderId = order.id(); this.quote = quote; for (OrderLine line : order.lines()) { lines.add(new InvoiceLine(line.book().title(), line.quantity(), line.subtotal())); } }
  public String orderId() { return orderId; }
  public List<InvoiceLine> lines() { return lines; }
  public Quote quote() { return quote; }
}
