"""A fixed, varied English sentence corpus for MiniLM calibration and evaluation."""

import random

_EVERYDAY = """
I left my keys on the kitchen table again.
Could you pick up some milk on your way home?
The neighbours' dog barked all night, so nobody on our street got much sleep.
We moved into a two-bedroom flat on the third floor last March.
My sister is learning to knit and has already made four lopsided scarves.
Please don't forget to water the tomato plants while I'm away.
The washing machine makes a terrible grinding noise during the spin cycle.
It took us almost an hour to find a parking space near the stadium.
Honestly, I think the old sofa was more comfortable than the new one.
Does anyone know where the spare light bulbs are kept?
He always reads the last page of a novel before starting the first chapter.
Our book club meets on the second Tuesday of every month at seven.
The children built a blanket fort in the living room and refused to leave it.
I need to renew my passport before the trip in August.
Breakfast is served from 7:00 to 10:30 in the hotel lobby.
She laughed so hard that she spilled coffee all over her notes.
Whose turn is it to take out the recycling this week?
The bus was late, the train was cancelled, and then it started to rain.
Grandma still sends handwritten birthday cards to all eleven of her grandchildren.
We painted the bathroom a pale shade of green that looks grey at night.
"""

_SCIENCE = """
Water boils at 100 degrees Celsius at sea level.
Photosynthesis converts light energy into chemical energy stored in glucose.
The mitochondria produce most of the cell's supply of adenosine triphosphate.
Light from the Sun takes about eight minutes and twenty seconds to reach Earth.
Why does ice float on water when most solids sink in their own liquid?
DNA is made of four bases: adenine, thymine, guanine and cytosine.
The speed of sound in dry air at 20 °C is roughly 343 metres per second.
Black holes form when massive stars collapse under their own gravity at the end of their lives.
Entropy in an isolated system never decreases over time.
Vaccines train the immune system to recognise a pathogen without causing the disease.
Jupiter has at least 95 known moons, and new ones are still being discovered.
The researchers measured soil acidity at 48 sites across the valley over three summers.
Plate tectonics explains why earthquakes cluster along certain boundaries.
A catalyst speeds up a chemical reaction without being consumed by it.
Neutrons and protons are themselves made of smaller particles called quarks.
How do migrating birds navigate across thousands of kilometres of open ocean?
The experiment was repeated 12 times and the results were consistent within 2%.
Octopuses have three hearts and blue, copper-based blood.
Sound cannot travel through a vacuum because there are no particles to vibrate.
The half-life of carbon-14 is approximately 5,730 years.
Coral reefs cover less than one percent of the ocean floor but support about a quarter of marine species.
Antibiotics are ineffective against viral infections such as the common cold.
"""

_TECH = """
Run `pip install -r requirements.txt` before starting the server.
The function returns None if the key is missing from the dictionary.
Our API rate limit is 1,000 requests per minute per token.
Segmentation fault (core dumped) appears when the pointer is dereferenced after free().
Set DEBUG=False in production, otherwise stack traces leak to users.
Why does `git rebase -i HEAD~3` open an editor instead of running immediately?
The query SELECT name, age FROM users WHERE age > 30 ORDER BY name; returns 412 rows.
Memory usage climbed to 14.2 GB before the container was killed by the OOM killer.
for i in range(10): print(i ** 2)
The new laptop has 32 GB of RAM, a 1 TB SSD and a battery that lasts all day.
Please reset your password using the link we emailed to you.
Error 404: the page you requested could not be found.
Compile with -O2 -Wall and fix every warning before opening a pull request.
The model was quantized to int8, which cut latency by 40% with almost no accuracy loss.
She wrote a small script that renames 3,000 photos by the date they were taken.
Is it safe to store API keys in environment variables?
x = torch.randn(4, 3, 224, 224); y = model(x)
The database migration failed halfway, leaving two tables in an inconsistent state.
Our website went down for 17 minutes because a certificate expired at midnight.
Use a hash map when you need constant-time lookups by key.
The printer says it's out of paper, but the tray is completely full.
Version 2.3.1 fixes a race condition in the connection pool.
{"user_id": 42, "status": "active", "tags": ["beta", "admin"]}
Turn it off and on again -- that fixes more problems than anyone likes to admit.
The recommendation engine retrains every night on the previous day's clicks.
"""

_MONEY = """
The company reported quarterly revenue of $4.7 billion, up 12% from last year.
Interest rates were raised by a quarter of a percentage point on Wednesday.
How much should I save each month to retire by the age of 60?
The rent is 1,250 euros a month, not including electricity and internet.
Shares fell 8.3% after the chief executive unexpectedly resigned.
Inflation slowed to 2.9% in June, the lowest level in more than two years.
I paid £3.80 for a coffee this morning, which seems outrageous.
The startup raised $15 million in a Series A round led by two venture funds.
Always read the fine print before signing a mortgage agreement.
Our team's budget was cut by a third, so the conference trip is cancelled.
The invoice (No. 2023-0457) is due within 30 days of receipt.
Gold prices hit a record high as investors looked for safe assets.
A diversified portfolio reduces risk but does not eliminate it.
Can I deduct home office expenses if I only work from home two days a week?
The bakery sells about 600 loaves of bread on a typical Saturday.
Unemployment in the region dropped from 7.1% to 6.4% over twelve months.
He lent his brother 500 dollars and never saw the money again.
Currency exchange fees at the airport are usually much higher than at a bank.
The central bank warned that household debt has reached 'worrying' levels.
"""

_TRAVEL_FOOD = """
The flight to Lisbon was delayed by three hours because of fog.
Is there a pharmacy open on Sunday near the train station?
We hiked twelve kilometres along the coast and swam in a freezing cove.
Our hotel room overlooked a noisy market that opened at five in the morning.
Do I need a visa to visit Japan for two weeks as a tourist?
The night train from Vienna to Venice has small but comfortable sleeping cabins.
Remember to validate your ticket before boarding, or you may be fined.
Preheat the oven to 180 °C and grease a 23 cm round cake tin.
Add two cloves of garlic, a pinch of salt and a splash of olive oil.
This soup tastes even better the next day.
Whisk the eggs and sugar until pale, then fold in the flour gently.
Is this dish suitable for vegetarians, or does the sauce contain fish?
The restaurant only has six tables, so you have to book weeks in advance.
Fresh basil should be added at the very end so it keeps its flavour.
I burned the rice again; the smoke alarm went off twice.
Let the dough rest for at least 30 minutes before rolling it out.
The street food stall sold the best dumplings we ate during the whole trip.
We missed the last ferry and spent the night in a tiny guesthouse run by a retired fisherman.
Tap water is safe to drink in most parts of the country.
The museum is free on the first Sunday of every month.
A strong espresso after lunch is a tradition in many parts of Italy.
"""

_HEALTH_SPORT = """
Drinking enough water is important, especially during hot weather.
The doctor recommended thirty minutes of moderate exercise five days a week.
How long does it usually take to recover from a sprained ankle?
Regular sleep patterns can improve mood and concentration.
Wash your hands for at least 20 seconds with soap and warm water.
Symptoms include fever, a dry cough and fatigue lasting more than a week.
She ran her first marathon in 3 hours and 41 minutes.
The home team scored twice in the final five minutes to win 3-2.
Tickets for the final sold out within an hour of going on sale.
He has played tennis every Saturday morning for the past twenty years.
The referee's decision was controversial, and fans booed for several minutes.
Which country has won the most Olympic gold medals in swimming?
Stretching before running may not prevent injuries as much as people think.
The cyclist crashed on the descent but got back on the bike and finished the stage.
Our local swimming pool is closed for repairs until September.
Too much screen time before bed can make it harder to fall asleep.
The coach said the team lacked energy and made too many careless passes.
A balanced diet includes vegetables, whole grains, protein and healthy fats.
After the knee surgery he needed six weeks of physiotherapy before he could walk without crutches.
"""

_HISTORY_CULTURE = """
The Roman Empire was divided into eastern and western halves in 395 AD.
The printing press made books far cheaper and spread ideas across Europe.
Who painted the ceiling of the Sistine Chapel?
The first permanent photograph was taken in the 1820s and needed hours of exposure.
The Great Wall of China was built over many centuries by different dynasties.
Shakespeare wrote about 37 plays and 154 sonnets.
In 1969, two astronauts walked on the Moon while a third orbited above them.
The novel follows three generations of a family living in a small fishing village.
Jazz developed in New Orleans in the late nineteenth and early twentieth centuries.
The orchestra played Beethoven's Ninth Symphony to a packed concert hall.
Her poetry is full of quiet images: rain on tin roofs, empty kitchens, letters never sent.
Many ancient libraries were lost to fire, war and simple neglect.
The festival attracts more than 200,000 visitors every summer.
Is it true that the Vikings reached North America around the year 1000?
The film won four awards, including best director and best original screenplay.
Archaeologists found pottery fragments that are over 9,000 years old.
The museum's new exhibition explores how clothing reflected social class in the 1800s.
Critics praised the play's sharp dialogue but complained about its three-hour running time.
"""

_NATURE_NEWS = """
Heavy rain is expected across the north of the country tomorrow afternoon.
The forest fire has burned more than 5,000 hectares since Monday.
A magnitude 6.1 earthquake struck off the coast early this morning; no tsunami warning was issued.
The river burst its banks after three days of continuous rain.
Autumn leaves turned the hillside red, orange and gold.
Bees are essential pollinators for many of the crops we eat.
The city council approved plans for a new bike lane along the river.
Temperatures could reach 38 degrees on Thursday, so stay indoors if you can.
Why are so many frog species disappearing around the world?
The government announced a new plan to plant one million trees by 2030.
Local residents protested against the closure of the village's only school.
Snow closed the mountain pass, stranding dozens of lorries overnight.
Scientists warn that sea levels could rise by up to a metre by the end of the century.
The election results will be announced shortly after midnight.
Police are asking witnesses of Tuesday's collision to come forward.
A rare white deer was spotted in the national park last week.
Wind turbines now provide almost a quarter of the country's electricity.
The hurricane weakened to a tropical storm after making landfall.
Thousands gathered in the main square to celebrate the team's victory.
"""

_WORK_SUPPORT = """
Thank you for contacting customer support; how can we help you today?
My order arrived damaged and I would like a replacement.
The meeting has been moved to 3 p.m. on Thursday in room B-204.
Could you send me the slides from yesterday's presentation?
We regret to inform you that the item is currently out of stock.
Your parcel will be delivered between 9:00 and 13:00 tomorrow.
I am writing to apply for the position of junior data analyst.
Please find attached the signed contract and a copy of my ID.
The deadline for the report has been extended to Friday.
Why was I charged twice for the same subscription?
Our office will be closed from 24 December to 2 January.
Let's schedule a quick call to go over the remaining open issues.
The new hire starts on Monday, so please set up her laptop and accounts.
If the problem persists, reply to this email with your order number.
I'm afraid I can't make it to the workshop -- something urgent came up.
Kindly confirm receipt of this message at your earliest convenience.
The survey takes about ten minutes and all answers are anonymous.
He has been promoted to head of operations after eight years with the firm.
"""

_ODD = """
Wait... you did what?!
Yes, absolutely, count me in.
No way, really?
Hmm, not sure about that one :-/
"To be, or not to be" -- that is the question.
OK, fine; we'll do it your way (this time).
Call me at +44 20 7946 0958 or email info@example.com.
The ratio was 3:1, i.e. three parts water to one part vinegar.
Ugh!!! The Wi-Fi is down AGAIN.
P.S. Don't tell anyone about the surprise party!
Item #7 costs $19.99 -- or $15.00 with the coupon code SAVE25.
She said, 'I'll be there at 8,' but arrived at half past nine.
Top 3 reasons: (1) price, (2) speed, (3) reliability.
Room 101/B, Building C, 4th floor -- turn left after the lifts.
lol that's hilarious
Good morning, everyone!
C'est la vie, as they say.
The password must contain 8+ characters, a digit & a symbol (e.g. !@#$).
Version A vs. version B: 52.4% vs. 47.6% click-through.
"""

_LONG = """
Although the committee had spent nearly two years reviewing evidence from hospitals, schools and
  local councils, its final report offered few concrete recommendations and was widely criticised for
  avoiding the difficult questions about funding.
When the storm finally passed, the villagers walked down to the harbour to inspect the damage, and
  they found that most of the boats had survived while the old wooden pier had been torn apart.
If you are planning to travel during the holiday season, it is a good idea to book your tickets
  early, pack light, and leave extra time for security checks at the airport.
The software team decided to rewrite the payment module from scratch because the original code had
  grown so complicated over the years that nobody felt confident changing even a single line.
After graduating with a degree in chemistry, she spent five years working in a pharmaceutical
  laboratory before leaving to open a small bakery that now employs twelve people.
Nobody expected the quiet librarian to win the regional chess championship, but she beat three former
  champions in a row, shook their hands politely, and went straight back to work on Monday morning
  as if nothing had happened.
"""

_BLOCKS = [_EVERYDAY, _SCIENCE, _TECH, _MONEY, _TRAVEL_FOOD, _HEALTH_SPORT,
           _HISTORY_CULTURE, _NATURE_NEWS, _WORK_SUPPORT, _ODD, _LONG]

_PEOPLE = ["My uncle", "The new teacher", "A young architect", "Our landlord", "The old farmer",
           "Two students", "My best friend", "The mayor", "A retired nurse", "The chef"]
_DEEDS = ["repaired an old bicycle", "painted a mural", "found a lost wallet",
          "planted an apple tree", "wrote a short story", "fixed the leaking roof",
          "baked forty croissants", "adopted a three-legged cat", "sold his vintage car",
          "organised a charity run"]
_PLACES = ["in the garage", "behind the library", "at the community centre", "near the harbour",
           "in a rented studio", "on the village green"]
_TIMES = ["last weekend", "on Tuesday evening", "before sunrise", "during the summer holidays",
          "just before the storm", "after work yesterday"]
_CITIES = ["Berlin", "Madrid", "Toronto", "Osaka", "Nairobi", "Glasgow", "Lyon", "Denver",
           "Porto", "Krakow", "Melbourne", "Bologna"]
_VENUES = ["post office", "swimming pool", "public library", "farmers' market", "dentist",
           "town hall", "hardware shop", "bike repair shop"]
_DAYS = ["Monday", "Wednesday", "Friday", "Saturday", "Sunday", "public holidays"]
_PRODUCTS = [("vacuum cleaner", "battery"), ("coffee machine", "milk frother"),
             ("phone case", "button cover"), ("desk lamp", "switch"),
             ("rain jacket", "zip"), ("electric kettle", "lid"),
             ("pair of headphones", "left ear cup"), ("backpack", "shoulder strap")]
_PRAISE = ["works really well", "looks great", "was cheap", "arrived quickly",
           "is surprisingly light"]
_COMPLAINTS = ["broke after two weeks", "rattles constantly", "feels flimsy",
               "stopped working on day three", "is hard to clean"]
_MONTHS = ["January", "March", "May", "July", "September", "November"]


def _parse_block(block: str) -> list[str]:
    """One sentence per line; indented lines continue the previous sentence."""
    sentences: list[str] = []
    for line in block.strip("\n").splitlines():
        if line.startswith("  ") and sentences:
            sentences[-1] += " " + line.strip()
        elif line.strip():
            sentences.append(line.strip())
    return sentences


def _story(rng: random.Random) -> str:
    return (f"{rng.choice(_PEOPLE)} {rng.choice(_DEEDS)} {rng.choice(_PLACES)} "
            f"{rng.choice(_TIMES)}.")


def _timetable(rng: random.Random) -> str:
    src, dst = rng.sample(_CITIES, 2)
    hour, minute = rng.randrange(5, 23), rng.choice([0, 5, 15, 20, 35, 45, 50])
    return (f"The {rng.choice(['train', 'coach', 'ferry', 'flight'])} from {src} to {dst} "
            f"leaves at {hour:02d}:{minute:02d} from gate {rng.randrange(1, 40)}.")


def _question(rng: random.Random) -> str:
    venue, day = rng.choice(_VENUES), rng.choice(_DAYS)
    forms = [f"What time does the {venue} open on {day}?",
             f"Is the {venue} in {rng.choice(_CITIES)} closed on {day}?",
             f"Where is the nearest {venue}, and is it far from here?"]
    return rng.choice(forms)


def _review(rng: random.Random) -> str:
    product, part = rng.choice(_PRODUCTS)
    return (f"The {product} {rng.choice(_PRAISE)}, but the {part} "
            f"{rng.choice(_COMPLAINTS)}; I'd give it {rng.randrange(1, 5)}/5.")


def _weather(rng: random.Random) -> str:
    city, month = rng.choice(_CITIES), rng.choice(_MONTHS)
    rain, temp = rng.randrange(8, 240), rng.randrange(3, 33)
    return f"{city} recorded {rain} mm of rain in {month}, with a high of {temp} °C."


def _generated(count: int, seed: int = 1234) -> list[str]:
    """Deterministic, duplicate-free sentences from the template families."""
    rng = random.Random(seed)
    makers = [_story, _timetable, _question, _review, _weather]
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        sentence = makers[len(out) % len(makers)](rng)
        if sentence not in seen:
            seen.add(sentence)
            out.append(sentence)
    return out


def _interleave(groups: list[list[str]]) -> list[str]:
    """Round-robin merge so every prefix mixes topics."""
    out: list[str] = []
    for i in range(max(len(g) for g in groups)):
        out += [g[i] for g in groups if i < len(g)]
    return out


def _build() -> tuple[str, ...]:
    handwritten = [_parse_block(block) for block in _BLOCKS]
    generated = _generated(125)
    chunks = [generated[i::5] for i in range(5)]
    merged = _interleave(handwritten + chunks)
    return tuple(dict.fromkeys(merged))


SENTENCES: tuple[str, ...] = _build()
NUM_CALIBRATION = 64


def calibration_sentences() -> list[str]:
    """The first NUM_CALIBRATION sentences (disjoint from evaluation_sentences)."""
    return list(SENTENCES[:NUM_CALIBRATION])


def evaluation_sentences() -> list[str]:
    """All sentences after the calibration slice (at least 256)."""
    return list(SENTENCES[NUM_CALIBRATION:])
