package com.example.bookshop.pricing;

import com.example.bookshop.model.Category;
import com.example.bookshop.model.OrderLine;
import com.example.bookshop.util.Money;
import com.example.bookshop.util.Percent;

import java.util.EnumMap;
import java.util.Map;

public final class TaxTable {
  private final Map<Category, Percent> rates = new EnumMap<>(Category.class);
  public TaxTable set(Category category, Percent rate) { rates.put(category, rate); return this; }
  public Money taxOn(OrderLine line) { Percent rate = rates.getOrDefault(line.book().category(), new Percent(0)); return line.subtotal().percent(rate); }
}
