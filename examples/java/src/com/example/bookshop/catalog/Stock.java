package com.example.bookshop.catalog;

public final class Stock {
  private Stock() {}
  public static boolean available(CatalogEntry entry, int quantity) { return entry.stock() >= quantity; }
}
