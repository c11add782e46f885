// The console's entry point: routes the location to a page.
document.getElementById('main').textContent = 'AgentNexus console';
