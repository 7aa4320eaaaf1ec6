package com.example.bookshop.model;

import com.example.bookshop.util.Checks;
import com.example.bookshop.util.Money;

public final class OrderLine {
  private final Book book;
  private final int quantity;
  public OrderLine(Book book, int quantity) { this.book = book; this.quantity = Checks.positive(quantity, "quantity"); }
  public Book book() { return book; }
  public int quantity() { return quantity; }
  public Money subtotal() { return book.price().amount().times(quantity); }
}
