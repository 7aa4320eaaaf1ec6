package com.example.bookshop.catalog;

import com.example.bookshop.model.Category;

import java.util.EnumMap;
import java.util.Map;

public final class Shelf {
  private Shelf() {}
  public static Map<Category, Integer> countByCategory(Catalog catalog) { Map<Category, Integer> counts = new EnumMap<>(Category.class); for (CatalogEntry e : catalog.entries()) { counts.merge(e.book().category(), e.stock(), Integer::sum); } return counts; }
}
