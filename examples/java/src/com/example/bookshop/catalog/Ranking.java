package com.example.bookshop.catalog;

import java.util.Comparator;

public final class Ranking {
  private Ranking() {}
  public static Comparator<CatalogEntry> byStockThenTitle() { return Comparator.comparingInt(CatalogEntry::stock).reversed().thenComparing(e -> e.book().title()); }
}
