package com.example.bookshop.orders;

import com.example.bookshop.util.Money;

public final class InvoiceLine {
  private final String title;
  private final int quantity;
  private final Money amount;
  public InvoiceLine(String title, int quantity, Money amount) { this.title = title; this.quantity = quantity; this.amount = amount; }
  public String title() { return title; }
  public int quantity() { return quantity; }
  public Money amount() { return amount; }
}
