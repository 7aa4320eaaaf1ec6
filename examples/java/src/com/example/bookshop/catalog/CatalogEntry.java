package com.example.bookshop.catalog;

import com.example.bookshop.model.Book;

public final class CatalogEntry {
  private final Book book;
  private int stock;
  public CatalogEntry(Book book, int stock) { this.book = book; this.stock = stock; }
  public Book book() { return book; }
  public int stock() { return stock; }
  public void take(int n) { if (n > stock) { throw new IllegalStateException("only " + stock + " of " + book.title()); } stock -= n; }
}
