package com.example.bookshop.report;

import com.example.bookshop.util.Money;

public final class ReportLine {
  private final String label;
  private final Money amount;
  public ReportLine(String label, Money amount) { this.label = label; this.amount = amount; }
  public String label() { return label; }
  public Money amount() { return amount; }
}
